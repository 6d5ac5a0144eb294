"""The documented submission path, walked as the docs write it: the example method of
docs/add-a-method.md saved in baselines/, then docs/submit.md's run command (with the suite
and method names replaced), its validate command and the site, ending in a leaderboard row with
a Δm. The commands are read from the documents, so the docs cannot drift from the tool."""

from __future__ import annotations

import re
import shlex

from mtlbench.cli import main
from tests.conftest import REPO, TINY_TOML, commit_all, make_project


def _blocks(doc: str, lang: str = "") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "docs" / doc).read_text(encoding="utf-8"), flags=re.S)


def _command(block: str, program: str) -> list[str]:
    """The first ``.venv/bin/mtlbench <program> ...`` line of a shell block, as arguments."""
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(f".venv/bin/mtlbench {program}"):
            return shlex.split(line)[1:]
    raise AssertionError(f"no `mtlbench {program}` command in {block!r}")


def test_the_documented_submission_path(tmp_path, capsys):
    code = _blocks("add-a-method.md", "python")[0]
    name = re.search(r'name = "([^"]+)"', code).group(1)
    config = make_project(tmp_path / "p", TINY_TOML.replace("seeds = [0, 1]", "seeds = [0]"))
    (config.parent / "baselines" / "norm_avg.py").write_text(code)
    commit_all(config.parent)  # submit.md: commit before running

    shell = "\n".join(_blocks("submit.md"))
    run = [a.replace("mymethod", name) for a in _command(shell, "run")]
    run[run.index("--suite") + 1] = "tiny"
    results = tmp_path / "results"
    assert main([*run, "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress", "--only", "method=stl,ew"]) == 0
    files = sorted(p.name for p in results.rglob("*.json") if ".cache" not in p.parts)
    assert files == ["ew__none__seed0.json", f"{name}__none__seed0.json", "stl__none__seed0.json"]

    validate = _command(shell, "validate")
    assert validate[:2] == ["validate", "leaderboard/results"]
    capsys.readouterr()
    assert main(["validate", str(results), "--config", str(config)]) == 0, capsys.readouterr().out

    site = tmp_path / "site"
    assert main(["leaderboard", "--results", str(results), "--out", str(site)]) == 0
    page = next(site.glob("tiny--multimnist--r8*.html")).read_text()
    assert f">{name}<" in page and "Δm cannot be computed" not in page
