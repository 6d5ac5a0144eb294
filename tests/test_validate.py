"""`mtlbench validate` on a real run: accepted as it is; each kind of broken file rejected with
a message naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from mtlbench.core.cell import Cell
from mtlbench.cli import main
from mtlbench.report.validate import known_from_project, validate_paths
from tests.conftest import REPO
from tests.real_results import real_results

GOOD = "site/multimnist/vit1/pcgrad__none__seed0.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    return real_results(tmp_path_factory)


@pytest.fixture(scope="module")
def known(run):
    return known_from_project(run[0].parent)


def test_the_real_run_is_accepted(run, capsys):
    config, results = run
    assert main(["validate", str(results), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "12 files checked, 0 rejected, 0 warnings" in out


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        *parents, last = path.split("/")
        for p in parents:
            d = d[p]
        d[last] = value

    return change


def _del(path: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        *parents, last = path.split("/")
        for p in parents:
            d = d[p]
        del d[last]

    return change


def _rehash(change: Callable[[dict], None]) -> Callable[[dict], None]:
    """Apply ``change`` to the cell and store the matching hash (a consistent, wrong file)."""

    def wrapped(d: dict) -> None:
        change(d)
        d["config_hash"] = Cell(**d["cell"]).config_hash

    return wrapped


def _both(key: str, value: Any) -> Callable[[dict], None]:
    return _rehash(lambda d: (d.__setitem__(key, value), d["cell"].__setitem__(key, value)))


CASES = {
    # name: (change to the JSON, field named in the message, words in the message)
    "metric is NaN": (_set("metrics/test/left.acc", float("nan")), "metrics.test.left.acc", "finite number"),
    "metric is null": (_set("metrics/val/right.acc", None), "metrics.val.right.acc", "no NaN, Inf or null"),
    "metric missing": (_del("metrics/test/right.acc"), "metrics.test", "differ from metric_info"),
    "hash does not match": (_set("cell/protocol/lr", 0.5), "config_hash", "does not match the stored config"),
    "copy differs from cell": (_set("seed", 5), "seed", "but cell.seed = 0"),
    "unknown status": (_set("status", "done"), "status", "'ok' or 'failed'"),
    "seed not an integer": (_both("seed", "zero"), "seed", "an integer >= 0"),
    "p% out of range": (_set("conflict/p_pct", 140.0), "conflict.p_pct", "[0, 100]"),
    "layer cosine out of range": (_set("conflict/layers/mean_cos", [2.0]), "conflict.layers.mean_cos", "[-1, 1]"),
    "histogram inconsistent": (_set("conflict/histogram/counts", [1, 0, 0, 0, 0]), "conflict.histogram.counts", "summing to"),
    "negative step time": (_set("cost/step_time_ms", -3.0), "cost.step_time_ms", "a number > 0"),
    "no provenance commit": (_set("provenance/git/commit", None), "provenance.git.commit", "git commit"),
    "no provenance torch": (_del("provenance/torch"), "provenance.torch", "missing"),
    "bad start time": (_set("provenance/start_time", "yesterday"), "provenance.start_time", "ISO 8601"),
    "unknown task": (_both("task", "nyuv3"), "task", "unknown task 'nyuv3'"),
    "old task version": (_both("task_version", "0"), "task_version", "re-run the cell"),
    "unknown method": (_both("method_name", "gradnorm2"), "method_name", "unknown method 'gradnorm2'"),
    "wrong method kind": (_set("method_kind", "weighting"), "method_kind", "is a 'gradient' method"),
    "unknown method option": (_rehash(_set("cell/method_options", {"alpha": 1})), "cell.method_options", "not options of pcgrad"),
    "unknown mitigation": (_rehash(_set("cell/mitigation_name", "recon2")), "cell.mitigation_name", "unknown mitigation"),
    "metric direction flipped": (
        _set("metric_info/left.acc/higher_is_better", False),
        "metric_info",
        "differs from what multimnist declares",
    ),
    "html in a label": (_both("method", "<b>x</b>"), "method", "not a valid label"),
    "failed without reason": (lambda d: d.update(status="failed", reason=""), "reason", "needs the reason"),
    "missing required field": (_del("cell"), "file", "missing field(s) cell"),
    "cell's learning rate not a number": (_set("cell/protocol/lr", "fast"), "cell.protocol.lr", "number"),
    "cell without its protocol": (_del("cell/protocol"), "cell.protocol", "missing"),
    "wrong schema": (_set("schema", "mtlbench.result/0"), "file", "this mtlbench reads"),
}


@pytest.mark.parametrize("name", CASES)
def test_each_broken_file_is_rejected_with_its_field(name, run, known, tmp_path):
    change, field, words = CASES[name]
    data = json.loads((run[1] / GOOD).read_text())
    change(data)
    path = tmp_path / "pcgrad__none__seed0.json"
    path.write_text(json.dumps(data))  # NaN is written as the JSON token NaN
    report = validate_paths([path], known)
    assert report.rejected == [path]
    assert any(p.field == field and words in p.message for p in report.problems), [str(p) for p in report.problems]
    assert all(str(p).startswith(f"{path}: ") for p in report.problems)


def test_not_json_renamed_file_and_duplicates(run, known, tmp_path, capsys):
    config, results = run
    sub = tmp_path / "sub"
    shutil.copytree(results, sub)
    (tmp_path / "broken.json").write_text("{not json")
    renamed = tmp_path / "mine.json"
    shutil.copy(results / GOOD, renamed)
    assert main(["validate", str(results), str(sub), str(tmp_path / "broken.json"), str(renamed), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'broken.json'}: file: not valid JSON" in out
    assert f"{renamed}: file name: expected pcgrad__none__seed0.json" in out
    assert f"{sub / GOOD}: cell: duplicate: {results / GOOD} holds the same cell" in out
    assert "26 files checked, 14 rejected" in out  # 12 duplicates, the bad JSON, the renamed copy (also a duplicate)


def test_a_different_protocol_in_the_same_table_is_rejected(run, known, tmp_path):
    _, results = run
    data = json.loads((results / GOOD).read_text())
    data["cell"]["protocol"]["lr"] = 0.1
    path = tmp_path / "x" / "site" / "multimnist" / "vit1" / "pcgrad__none__seed5.json"
    data["seed"] = data["cell"]["seed"] = 5
    data["config_hash"] = Cell(**data["cell"]).config_hash
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    report = validate_paths([results, path.parents[3]], known)
    assert report.rejected == [path]
    assert [p.field for p in report.problems] == ["cell.protocol.lr"] and "only a tuned method's cells" in str(report.problems[0])
    data["cell"]["protocol"]["epochs"] = 99  # another field: the whole-protocol message
    data["config_hash"] = Cell(**data["cell"]).config_hash
    path.write_text(json.dumps(data))
    problems = validate_paths([results, path.parents[3]], known).problems
    assert "cell.protocol" in [p.field for p in problems] and "one table compares runs of one setting" in str(problems)


def test_a_tuned_methods_cells_may_differ_in_the_learning_rate_only(run, known, tmp_path):
    """Cells of a suite's `tune` grid (labels <method>.lr<lr>) use their own rate; nothing else may differ."""
    _, results = run
    data = json.loads((results / GOOD).read_text())
    out = tmp_path / "x" / "site" / "multimnist" / "vit1"
    out.mkdir(parents=True)
    for lr in (0.1, 0.01):
        data["method"] = data["cell"]["method"] = f"pcgrad.lr{lr:g}"
        data["cell"]["protocol"]["lr"] = lr
        data["config_hash"] = Cell(**data["cell"]).config_hash
        (out / f"pcgrad.lr{lr:g}__none__seed0.json").write_text(json.dumps(data))
    report = validate_paths([results, out.parents[2]], known)
    assert not report.rejected, report.problems
    data["cell"]["protocol"]["epochs"] = 99
    data["config_hash"] = Cell(**data["cell"]).config_hash
    (out / "pcgrad.lr0.01__none__seed0.json").write_text(json.dumps(data))
    assert validate_paths([results, out.parents[2]], known).rejected == [out / "pcgrad.lr0.01__none__seed0.json"]


def test_missing_path_dirty_checkout_warning_and_no_plugins(run, known, tmp_path, capsys):
    config, results = run
    report = validate_paths([tmp_path / "nowhere"], known)
    assert report.rejected and report.problems[0].message == "no such file or folder"
    data = json.loads((results / GOOD).read_text())
    data["provenance"]["git"]["dirty"] = True
    path = tmp_path / "pcgrad__none__seed0.json"
    path.write_text(json.dumps(data))
    report = validate_paths([path], known)
    assert not report.rejected and report.problems[0].warning and "uncommitted changes" in str(report.problems[0])
    assert main(["validate", str(path), "--config", str(tmp_path / "benchmark.toml")]) == 2
    assert "no tasks/ or baselines/ folder" in capsys.readouterr().err


def test_accepted_results_pass_validate():
    """Every file a pull request adds to leaderboard/results/ must pass validate."""
    accepted = REPO / "leaderboard" / "results"
    if not list(accepted.rglob("*.json")):
        pytest.skip("no accepted results in leaderboard/results/ yet")
    report = validate_paths([accepted], known_from_project(REPO))
    assert not report.rejected, "\n".join(str(p) for p in report.problems)
