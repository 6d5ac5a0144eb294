"""End to end through the CLI on the real embedded dataset: run, resume, determinism,
failure isolation, a dropped-in method, and the static site."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mtlbench.cli import main
from mtlbench.grid.config import load_benchmark
from mtlbench.train.cell import train_cell
from tests.conftest import BROKEN_METHOD, TINY_TOML, make_project


def results_of(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    config = make_project(root / "proj")
    results = root / "results"
    code = main(["run", "--config", str(config), "--results", str(results), "--no-progress"])
    return config, results, code


def test_one_result_file_per_cell(tiny_run):
    config, results, code = tiny_run
    assert code == 0
    files = results_of(results)
    assert len(files) == len(load_benchmark(config).cells()) == 8
    for name, r in files.items():
        assert r["status"] == "ok", (name, r.get("reason"))
        assert r["schema"] == "mtlbench.result/3" and len(r["config_hash"]) == 16
        assert set(r["metrics"]["test"]) == {"left.acc", "right.acc"}
        assert all(0.0 <= v <= 1.0 for v in r["metrics"]["test"].values())
        assert r["selection"]["rule"] == "best_val"
        cost, prov = r["cost"], r["provenance"]
        assert cost["step_time_ms"] > 0 and cost["peak_memory_mb"] > 0 and cost["params"] > 0
        assert {"mtlbench", "git", "torch", "timm", "python", "device_name", "start_time"} <= set(prov)
        if r["method"] == "stl":
            assert r["conflict"] is None and set(r["curves"]) == {"left", "right"}
        else:
            c = r["conflict"]
            assert c["n_samples"] == 8 and 0.0 <= c["p_pct"] <= 100.0  # 16 steps, every 2
            assert sum(c["histogram"]["counts"]) == c["n_samples"]  # one pair per sample
            assert len(c["layers"]["names"]) == len(c["layers"]["p_pct"]) > 10
            assert c["layers"]["names"][0] == "conv1"


def test_rerun_executes_nothing_new_and_deleting_one_result_reruns_only_it(tiny_run, capsys):
    config, results, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    assert "8 done, 0 failed, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == before

    victim = next(p for p in before if p.name == "mgda__none__seed1.json")
    old = json.loads(victim.read_text())
    victim.unlink()
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "7 done, 0 failed, 1 to run" in out and "mgda/none/seed1" in out
    after = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert [p for p in after if after[p] != before.get(p)] == [victim]
    assert json.loads(victim.read_text())["metrics"] == old["metrics"]  # deterministic re-run


def test_changed_config_makes_results_stale(tiny_run, tmp_path, capsys):
    config, results, _ = tiny_run
    changed = make_project(tmp_path / "p2", TINY_TOML.replace("lr = 0.002", "lr = 0.003", 1))
    assert main(["run", "--config", str(changed), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 cells (8 would run)" in out
    header, *rows = [line for line in out.splitlines()[1:] if not line.startswith("not expanded")]
    assert len(rows) == 8 and all(r.endswith("  run") for r in rows)
    for name in ("method", "hash", "action"):  # every column starts where its header does
        at = header.index(name)
        assert all(r[at - 2 : at] == "  " and r[at] != " " for r in rows), (name, out)


def test_status_table(tiny_run, capsys):
    config, results, _ = tiny_run
    assert main(["status", "--config", str(config), "--results", str(results), "--all"]) == 0
    out = capsys.readouterr().out
    assert "8 done" in out and "tiny/multimnist/r8/pcgrad/none/seed0" in out


def test_leaderboard_has_every_method_row(tiny_run, tmp_path, capsys):
    _, results, _ = tiny_run
    out = tmp_path / "site"
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    index = (out / "index.html").read_text()
    assert 'href="tiny--multimnist--r8.html"' in index
    page = (out / "tiny--multimnist--r8.html").read_text()
    for method in ("stl", "ew", "mgda", "pcgrad"):
        assert f'<td class="l"><a href="methods/{method}.html">{method}</a></td>' in page
    assert "Δm flat" in page and "flat" in page and "per-task" in page
    assert "http://" not in page and "https://" not in page  # nothing remote
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["method"]) == ["ew", "mgda", "pcgrad", "stl"]
    assert (summary["n_seeds"] == 2).all()
    stl = summary[summary["method"] == "stl"].iloc[0]
    assert stl["dm_flat"] == pytest.approx(0.0, abs=1e-9)  # the baseline against itself
    assert summary.loc[summary["method"] != "stl", "p_pct"].notna().all()


def test_validate_accepts_the_run_and_rejects_tampering(tiny_run, tmp_path, capsys):
    config, results, _ = tiny_run
    assert main(["validate", str(results), "--config", str(config)]) == 0
    good = next(results.rglob("ew__none__seed0.json"))
    data = json.loads(good.read_text())
    data["cell"]["seed"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["validate", str(bad), "--config", str(config)]) == 1
    assert "config_hash" in capsys.readouterr().out


def test_same_cell_twice_gives_identical_metrics(project, data_dir):
    bench = load_benchmark(project)
    for method in ("pcgrad", "ew"):
        cell = next(c for c in bench.cells() if c.method == method and c.seed == 1)
        a = train_cell(cell, bench.plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False).to_json()
        b = train_cell(cell, bench.plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False).to_json()
        assert a["metrics"] == b["metrics"]
        assert a["curves"]["joint"][-1]["train_loss"] == b["curves"]["joint"][-1]["train_loss"]
        assert a["conflict"]["series"] == b["conflict"]["series"]


def test_vit_backbone_runs(project, tmp_path):
    results = tmp_path / "r"
    assert main(["run", "--config", str(project), "--suite", "vit", "--results", str(results), "--no-progress"]) == 0
    files = results_of(results)
    assert len(files) == 2 and all(r["status"] == "ok" for r in files.values())
    assert any(name.startswith("<root>") for name in next(iter(files.values()))["conflict"]["layers"]["names"])


PLUGIN = BROKEN_METHOD + '''
from mtlbench.api import LossWeighting


class Halves(LossWeighting):
    """A new method dropped into baselines/: weights of one half."""
    name = "halves"
    description = "weights of 0.5"
    citation = "none"

    def weights(self, losses, info):
        return torch.full_like(losses, 0.5)
'''


def test_dropped_in_methods_and_failure_isolation(tmp_path, capsys):
    toml = TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["broken", "halves"]').replace(
        "seeds = [0, 1]", "seeds = [0]", 1)
    config = make_project(tmp_path / "p", toml)
    (config.parent / "baselines" / "mine.py").write_text(PLUGIN)
    results = tmp_path / "r"
    assert main(["list", "methods", "--config", str(config)]) == 0
    assert "halves" in capsys.readouterr().out
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 1
    files = results_of(results)
    broken = files["tiny/multimnist/r8/broken__none__seed0.json"]
    assert broken["status"] == "failed" and "non-finite update" in broken["reason"] and broken["traceback"]
    assert files["tiny/multimnist/r8/halves__none__seed0.json"]["status"] == "ok"
    capsys.readouterr()
    main(["status", "--config", str(config), "--results", str(results)])
    out = capsys.readouterr().out
    assert "failed" in out and "non-finite update" in out and "1 done" in out
    # failed cells are not retried unless asked
    assert main(["run", "--config", str(config), "--results", str(results), "--no-progress"]) == 0
    assert "1 done, 1 failed (re-run them with --retry-failed), 0 to run" in capsys.readouterr().out


def test_site_escapes_strings_from_result_files(tiny_run, tmp_path):
    _, results, _ = tiny_run
    src = next(results.rglob("ew__none__seed0.json"))
    data = json.loads(src.read_text())
    data.update(status="failed", reason="<script>alert(1)</script>", metrics={})
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "x.json").write_text(json.dumps(data))
    out = tmp_path / "site"
    assert main(["leaderboard", "--results", str(evil), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_result_files_have_no_nan_and_no_temp_files_left(tiny_run):
    _, results, _ = tiny_run
    # hidden working folders (.locks with its mutex file, .checkpoints) hold nothing once the grid is done
    assert not [p for p in results.rglob("*") if p.is_file() and (p.name.startswith(".") and p.name != ".mutex"
                                                                   or p.suffix in (".pt", ".lock"))]
    for r in results_of(results).values():
        text = json.dumps(r)
        assert "NaN" not in text and "Infinity" not in text
        assert all(math.isfinite(v) for v in r["metrics"]["val"].values())
