"""scripts/gram_trace.py: a Gram-matrix method's weights and update traced step by step in a real
cell (the embedded MultiMNIST, a small ResNet), and the trace's numbers checked against what
they claim to be."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_TOML, make_project

sys.path.insert(0, str(REPO / "scripts"))
import gram_trace  # noqa: E402

TOML = TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]', 'methods = ["stl", "ew", "mgda", "imtl-g"]')


def _rows(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_step_row_is_exact_on_a_hand_made_gram_matrix():
    """Two orthogonal gradients of norms 3 and 4, weights (1, -1): the update (3, -4) has cosine
    +3/5 with g_1 and -4/5 with g_2, norm 5 (1.25x the longest gradient); EW's (3, 4) has 3/5 and 4/5."""
    g = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    row = gram_trace.step_row(g @ g.T, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 3.0]), 7, 2)
    assert (row["step"], row["epoch"], row["loss"], row["w_sum"]) == (7, 2, 2.0, 0.0)
    assert row["cos_min"] == pytest.approx(-0.8) and row["cos_max"] == pytest.approx(0.6)
    assert row["ew_cos_median"] == pytest.approx(0.7)  # the median of (0.6, 0.8)
    assert row["update_ratio"] == pytest.approx(1.25) and row["eig_ratio"] == pytest.approx(9 / 16)
    # a zero update (opposite gradients, equal weights) has no direction: cosines 0, not NaN
    zero = gram_trace.step_row(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), torch.tensor([0.5, 0.5]), torch.zeros(2), 0, 0)
    assert zero["cos_min"] == zero["cos_max"] == 0.0 and zero["update_ratio"] == 0.0 and zero["eig_ratio"] == 0.0


def test_trace_of_imtl_g_in_a_real_cell(tmp_path, capsys):
    """IMTL-G's weights sum to 1 and its update has the same cosine with every task gradient on every
    step whose Gram matrix is well conditioned; the whole cell's re-run equals the runner's result."""
    config = make_project(tmp_path / "proj", TOML)
    from mtlbench.cli import main as cli

    results = tmp_path / "results"
    assert cli(["run", "--config", str(config), "--only", "method=imtl-g", "--only", "seed=0", "--results", str(results),
                "--no-progress", "--threads", "1"]) == 0  # fmt: skip
    stored = next(results.rglob("imtl-g__none__seed0.json"))
    out = tmp_path / "trace.csv"
    assert gram_trace.main(["--config", str(config), "--suite", "tiny", "--method", "imtl-g", "--seed", "0",
                            "--out", str(out), "--compare", str(stored)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rows = _rows(out)
    steps = json.loads(stored.read_text())["cost"]["train_steps"]
    assert len(rows) == steps == 16 and [r["step"] for r in rows] == list(range(steps))
    assert {r["epoch"] for r in rows} == {0.0, 1.0}
    for r in rows:
        assert r["w_sum"] == pytest.approx(1.0, abs=1e-9)
        if r["eig_ratio"] > 1e-3:  # full rank, well conditioned: equal cosines
            assert r["cos_max"] - r["cos_min"] < 1e-6
        assert math.isfinite(r["update_ratio"]) and r["update_ratio"] > 0
    assert "training losses of epochs 1-2: equal, test metrics: equal" in printed
    assert "update against every task" in printed and "longest updates" in printed


def test_max_steps_stops_early_and_the_same_steps_are_traced(tmp_path):
    config = make_project(tmp_path / "proj", TOML)
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    base = ["--config", str(config), "--suite", "tiny", "--method", "mgda", "--seed", "1"]
    assert gram_trace.main([*base, "--out", str(full)]) == 0
    assert gram_trace.main([*base, "--out", str(part), "--max-steps", "5"]) == 0
    assert _rows(part) == _rows(full)[:5]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "ew"], r"'ew' is not a Gram-matrix method .*imtl-g.*mgda"),
        (["--method", "imtl-g", "--seed", "5"], r"has 0 cells for method=imtl-g, mitigation=none, seed=5"),
        (["--method", "imtl-g", "--suite", "nope"], r"no suite named 'nope'"),
    ],
)
def test_clear_errors(tmp_path, argv, message):
    config = make_project(tmp_path / "proj", TOML)
    with pytest.raises(SystemExit, match=message):
        gram_trace.main(["--config", str(config), "--suite", "tiny", "--out", str(tmp_path / "t.csv"), *argv])
