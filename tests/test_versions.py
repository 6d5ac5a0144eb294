"""Plugin versions: a method whose version changes makes its old results stale — `status` says
so, `run` re-runs them, and aggregation never mixes them with results of the new version."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mtlbench.cli import main
from mtlbench.report.aggregate import load_results, summarize
from tests.conftest import commit_all
from tests.grid_support import make_grid_project


def _bump(project: Path, file: str, name: str, version: str) -> None:
    """Set the plugin's declared version (replacing its version line, or adding one)."""
    path = project / "baselines" / file
    text = path.read_text()
    if re.search(r'^    version = "[0-9.]+"', text, re.M):
        text = re.sub(r'^    version = "[0-9.]+"', f'    version = "{version}"', text, count=1, flags=re.M)
    else:
        text = text.replace(f'    name = "{name}"\n', f'    name = "{name}"\n    version = "{version}"\n', 1)
    path.write_text(text)
    commit_all(project)


def _run(config: Path, results: Path, *only: str) -> None:
    args = ["run", "--config", str(config), "--results", str(results), "--no-progress"]
    for o in only:
        args += ["--only", o]
    assert main(args) == 0


def test_a_new_method_version_reruns_old_results_and_never_mixes_them(tmp_path, capsys):
    config = make_grid_project(tmp_path / "p")
    results = tmp_path / "results"
    _run(config, results, "method=stl,pcgrad", "seed=0,1")
    pcgrad = results / "grid" / "multimnist" / "r8" / "pcgrad__none__seed0.json"
    old = json.loads(pcgrad.read_text())["method_version"]
    new = str(int(old) + 1)
    _bump(config.parent, "pcgrad.py", "pcgrad", new)
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--results", str(results), "--only", "method=stl,pcgrad"]) == 0
    status = capsys.readouterr().out
    assert "stale (2):" in status and f"method version {old} in the result, {new} now" in status

    _run(config, results, "method=stl,pcgrad", "seed=1")  # re-runs only the stale pcgrad cell of seed 1
    out = capsys.readouterr().out
    ran = [line.split()[1] for line in out.splitlines() if line.startswith("ok ")]
    assert ran == ["grid/multimnist/r8/pcgrad/none/seed1"]
    assert json.loads((pcgrad.parent / "pcgrad__none__seed1.json").read_text())["method_version"] == new

    loaded = load_results([results])  # seed 0 of pcgrad is still the old version: left out, reported
    rows = loaded.runs[loaded.runs["method"] == "pcgrad"]
    assert list(rows["seed"]) == [1] and set(rows["method_version"]) == {new}
    assert any(f"pcgrad/none: 1 result(s) of method version {old}" in p and str(pcgrad) in p for p in loaded.problems)
    table = summarize(loaded).set_index("method")
    assert table.loc["pcgrad", "n_seeds"] == 1 and table.loc["pcgrad", "method_version"] == new
    assert table.loc["stl", "n_seeds"] == 2  # other methods are untouched

    _run(config, results, "method=stl,pcgrad")  # the rest of the stale cells
    assert json.loads(pcgrad.read_text())["method_version"] == new
    assert load_results([results]).problems == []


def test_rewriting_accepted_results_in_the_repository_does_not_mark_the_code_dirty(tmp_path):
    """Accepted results are tracked files: re-running them in place modifies tracked files, which
    must not count as uncommitted code in the provenance (other changes still do)."""
    config = make_grid_project(tmp_path / "p")
    accepted = config.parent / "leaderboard" / "results"
    _run(config, accepted, "method=ew", "seed=0")
    commit_all(config.parent)
    result = accepted / "grid" / "multimnist" / "r8" / "ew__none__seed0.json"
    result.unlink()  # a tracked result to re-run: the checkout now differs from its commit
    _run(config, accepted, "method=ew", "seed=0")
    assert json.loads(result.read_text())["provenance"]["git"]["dirty"] is False
    (config.parent / "baselines" / "ew.py").write_text((config.parent / "baselines" / "ew.py").read_text() + "\n# edit\n")
    result.unlink()
    _run(config, accepted, "method=ew", "seed=0")
    assert json.loads(result.read_text())["provenance"]["git"]["dirty"] is True


def test_a_project_outside_git_records_no_commit_and_writes_its_results(tmp_path):
    """A project folder that is no git checkout (an installed mtlbench, a fresh folder): the run
    records commit and dirty as null and writes its result (the result schema rejected the null
    before: the run crashed); `validate`, the gate of accepted results, still asks for the commit."""
    from mtlbench.train.provenance import git_state

    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    config = make_grid_project(tmp_path / "p")
    shutil.rmtree(config.parent / ".git", ignore_errors=True)
    results = tmp_path / "r"
    _run(config, results, "method=ew", "seed=0")
    (result,) = results.rglob("*.json")
    data = json.loads(result.read_text())
    assert data["status"] == "ok" and data["provenance"]["git"] == {"commit": None, "dirty": None}
    out = subprocess.run([sys.executable, "-m", "mtlbench", "validate", str(results)], capture_output=True, text=True)
    assert out.returncode == 1 and "provenance.git.commit: None, expected the 40-hex git commit" in out.stdout


def test_an_edit_made_while_a_grid_runs_is_not_recorded_for_its_cells(tmp_path):
    """The provenance is the code state when the grid was planned (what its cells run): a
    tracked file edited while a cell runs does not mark that cell dirty; the next grid, planned
    from the edited tree, records it."""
    config = make_grid_project(tmp_path / "p")
    notes = config.parent / "notes.txt"
    notes.write_text("v1\n")
    (config.parent / "baselines" / "touchy.py").write_text(
        "from pathlib import Path\n\nfrom mtlbench.api import LossWeighting\n\n\nclass Touchy(LossWeighting):\n"
        '    name = "touchy"\n\n    def weights(self, losses, info):  # during training\n'
        '        Path(__file__).parents[1].joinpath("notes.txt").write_text("edited while the grid ran\\n")\n'
        "        return losses.new_ones(len(losses))\n"
    )
    commit_all(config.parent)
    results = tmp_path / "r"
    args = ["run", "--config", str(config), "--results", str(results), "--no-progress", "--add-method", "touchy"]
    assert main([*args, "--only", "seed=0"]) == 0
    assert notes.read_text() == "edited while the grid ran\n"  # the tree changed during the cell
    first = next(results.rglob("touchy__none__seed0.json"))
    assert json.loads(first.read_text())["provenance"]["git"]["dirty"] is False
    assert main([*args, "--only", "seed=1"]) == 0
    second = next(results.rglob("touchy__none__seed1.json"))
    assert json.loads(second.read_text())["provenance"]["git"]["dirty"] is True
