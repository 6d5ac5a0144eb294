"""Learning-rate tuning with an equal budget: the grid expands each tuned method once per rate,
the report keeps the rate chosen on validation (never on test) and shows the cost."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mtlbench.cli import main
from mtlbench.core.errors import ConfigError
from mtlbench.grid.config import load_benchmark
from mtlbench.report.tuning import select_tuned
from mtlbench.site.build import build_site
from tests.conftest import make_project

TOML = """
[backbones.vit1]
model = "vit_tiny_patch16_224"
kwargs = { img_size = 36, patch_size = 12, depth = 1, embed_dim = 32, num_heads = 2 }

[suites.tuned]
backbones = ["vit1"]
methods = ["stl", "ew", "pcgrad"]
seeds = [0, 1]
conflict = { every = 4 }
tune = TUNE

[suites.tuned.tasks.multimnist]
epochs = 1
batch_size = 32
lr = 0.002
max_train_samples = 64
eval_batch_size = 1024
"""
TUNE = '{ lr = [0.0005, 0.005], methods = ["ew"] }'


def test_a_tuned_method_runs_once_per_learning_rate_under_its_own_label(tmp_path):
    bench = load_benchmark(make_project(tmp_path / "p", TOML.replace("TUNE", TUNE)))
    cells = bench.suites["tuned"].cells
    lrs = {(c.method, c.seed): c.protocol.lr for c in cells}
    assert sorted({m for m, _ in lrs}) == ["ew.lr0.0005", "ew.lr0.005", "pcgrad", "stl"]
    assert lrs[("ew.lr0.0005", 0)] == 0.0005 and lrs[("ew.lr0.005", 1)] == 0.005 and lrs[("pcgrad", 0)] == 0.002
    assert len({c.config_hash for c in cells}) == len(cells) == 8
    assert {c.method_name for c in cells if c.method.startswith("ew")} == {"ew"}


@pytest.mark.parametrize(
    "tune, message",
    [
        ('{ lr = [0.001], methods = ["ew"] }', "at least two positive learning rates"),
        ('{ lr = [0.001, -1.0], methods = ["ew"] }', "at least two positive learning rates"),
        ('{ lr = [0.001, 0.001], methods = ["ew"] }', "must differ"),
        ('{ lr = [0.001, 0.01], methods = ["mgda"] }', "not a method label of this suite"),
        ('{ lr = [0.001, 0.01], methods = ["stl"] }', "not tunable"),
        ('{ lr = [0.001, 0.01], method = ["ew"] }', "method"),
        ('[0.001, 0.01]', "expected a table"),
    ],
)
def test_bad_tuning_tables_are_refused_with_the_key(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_benchmark(make_project(tmp_path / "p", TOML.replace("TUNE", tune)))
    assert "suites.tuned.tune" in str(e.value)


def _table(val_dm, test_dm, mitigation="none"):
    rows = []
    for lr, v, t in zip((0.0003, 0.001, 0.003), val_dm, test_dm):
        rows.append({"suite": "s", "task": "t", "backbone": "b", "method": f"ew.lr{lr:g}", "method_name": "ew",
                     "mitigation": mitigation, "lr": lr, "dm_val_flat": v, "dm_val_flat_std": 0.1, "dm_flat": t,
                     "n_seeds": 3, "wall_time_s": 10.0})  # fmt: skip
    rows.append({"suite": "s", "task": "t", "backbone": "b", "method": "pcgrad", "method_name": "pcgrad",
                 "mitigation": mitigation, "lr": 0.001, "dm_val_flat": 9.0, "dm_val_flat_std": 0.1, "dm_flat": 9.0,
                 "n_seeds": 3, "wall_time_s": 12.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_grid_point_is_chosen_on_validation_never_on_test():
    table = _table(val_dm=[1.0, 0.5, 0.8], test_dm=[-5.0, 2.0, 0.0])  # the best test Δm is not the best validation Δm
    kept, families = select_tuned(table, {"t": "flat"})
    assert sorted(kept["method"]) == ["ew.lr0.001", "pcgrad"]
    ew = kept[kept["method"] == "ew.lr0.001"].iloc[0]
    assert ew["tuned_from"] == "ew" and ew["tuned_lrs"] == "0.0003, 0.001, 0.003"
    assert ew["tuning_runs"] == 9 and ew["tuning_wall_s"] == 90.0
    assert kept[kept["method"] == "pcgrad"].iloc[0]["tuned_from"] == ""
    (family,) = families
    assert family.chosen == "ew.lr0.001" and [p["lr"] for p in family.points] == [0.0003, 0.001, 0.003]
    assert not family.at_edge  # inside the grid
    # a tie goes to the smaller rate; without validation Δm (no baseline) nothing is chosen
    assert select_tuned(_table([0.5, 0.5, 0.8], [0, 0, 0]), {})[1][0].chosen == "ew.lr0.0003"
    assert select_tuned(_table([0.5, 0.5, 0.8], [0, 0, 0]), {})[1][0].at_edge  # the smallest rate
    assert select_tuned(_table([0.9, 0.5, 0.4], [0, 0, 0]), {})[1][0].at_edge  # the largest rate
    untuned, none = select_tuned(_table([math.nan] * 3, [0, 0, 0]), {})
    assert len(untuned) == 4 and none == []


def test_each_mitigation_is_tuned_on_its_own():
    table = pd.concat([_table([1.0, 0.5, 0.8], [0, 0, 0]), _table([0.2, 0.5, 0.8], [0, 0, 0], "recon")])
    kept, families = select_tuned(table.reset_index(drop=True), {})
    assert sorted(zip(kept["method"], kept["mitigation"])) == [
        ("ew.lr0.0003", "recon"), ("ew.lr0.001", "none"), ("pcgrad", "none"), ("pcgrad", "recon")]  # fmt: skip
    assert len(families) == 2


def test_a_tuned_suite_runs_and_its_page_shows_the_choice_and_cost(tmp_path):
    config = make_project(tmp_path / "p", TOML.replace("TUNE", TUNE))
    results = tmp_path / "results"
    assert main(["run", "--config", str(config), "--suite", "tuned", "--results", str(results), "--no-progress"]) == 0
    report = build_site([results], tmp_path / "site")
    assert report.n_runs == 8 and not report.problems
    page = (tmp_path / "site" / "tuned--multimnist--vit1.html").read_text()
    assert "Learning-rate tuning" in page and "val Δm at lr 0.0005" in page and "val Δm at lr 0.005" in page
    assert "at the grid's edge" in page  # with two rates either choice is at an edge
    summary = pd.read_csv(tmp_path / "site" / "summary.csv")
    tuned = summary[summary["tuned_from"] == "ew"]
    assert len(tuned) == 1 and tuned.iloc[0]["tuning_runs"] == 4  # two rates x two seeds
    runs = pd.read_csv(tmp_path / "site" / "runs.csv")
    ew = runs[runs["method_name"] == "ew"].groupby("method")["dm_val_flat"].mean()
    assert tuned.iloc[0]["method"] == ew.idxmin()  # the lower mean validation Δm
    assert set(summary["method"]) == {"stl", "pcgrad", tuned.iloc[0]["method"]}
    assert summary[summary["method"] == tuned.iloc[0]["method"]].iloc[0]["vs_ew"] == "reference"
