"""Δm in both conventions: hand-computed cases and published rows."""

from __future__ import annotations

import pytest

from mtlbench.core.result import MetricDecl
from mtlbench.report.aggregate import delta_m

INFO = {
    "a.acc": MetricDecl(task="a", higher_is_better=True),
    "a.err": MetricDecl(task="a", higher_is_better=False),
    "b.acc": MetricDecl(task="b", higher_is_better=True),
}
BASE = {"a.acc": 0.8, "a.err": 0.25, "b.acc": 0.6}
METHOD = {"a.acc": 0.9, "a.err": 0.2, "b.acc": 0.5}


def test_flat_convention_by_hand():
    # terms: -(0.9-0.8)/0.8 = -0.125 ; +(0.2-0.25)/0.25 = -0.2 ; -(0.5-0.6)/0.6 = +1/6
    assert delta_m(METHOD, BASE, INFO, "flat") == pytest.approx(100 * (-0.125 - 0.2 + 1 / 6) / 3)
    assert delta_m(METHOD, BASE, INFO, "flat") == pytest.approx(-5.277777, abs=1e-6)


def test_per_task_convention_by_hand():
    # task a: mean(-0.125, -0.2) = -0.1625 ; task b: +1/6 ; mean over tasks
    assert delta_m(METHOD, BASE, INFO, "task") == pytest.approx(100 * (-0.1625 + 1 / 6) / 2)
    assert delta_m(METHOD, BASE, INFO, "task") == pytest.approx(0.208333, abs=1e-6)


def test_conventions_agree_with_one_metric_per_task():
    info = {"l.acc": MetricDecl(task="l", higher_is_better=True), "r.acc": MetricDecl(task="r", higher_is_better=True)}
    m, b = {"l.acc": 0.95, "r.acc": 0.90}, {"l.acc": 0.93, "r.acc": 0.91}
    assert delta_m(m, b, info, "flat") == pytest.approx(delta_m(m, b, info, "task"))


def test_baseline_against_itself_is_zero():
    assert delta_m(BASE, BASE, INFO, "flat") == 0.0
    assert delta_m(BASE, BASE, INFO, "task") == 0.0


def test_unknown_convention():
    with pytest.raises(ValueError, match="unknown Δm convention 'mean'"):
        delta_m(METHOD, BASE, INFO, "mean")


# Nash-MTL (Navon et al., ICML 2022), Table 2 (NYUv2, SegNet-MTAN, mean of the last 10 epochs):
# mIoU, PixAcc, AbsErr, RelErr, AngleMean, AngleMedian, <11.25, <22.5, <30 and the published Δm%.
# STL baseline from the design notes (§5). Percent-valued columns are stored as fractions.
NYU_KEYS = ["miou", "pixacc", "abs", "rel", "mean", "median", "11.25", "22.5", "30"]
NYU_HIGHER = [1, 1, 0, 0, 0, 0, 1, 1, 1]
NYU_TASK = ["seg", "seg", "depth", "depth", "normal", "normal", "normal", "normal", "normal"]
NYU_STL = [0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915]
NASH_MTL_TABLE2 = {
    "LS": ([39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08], 5.59),
    "SI": ([38.45, 64.27, 0.5354, 0.2201, 27.60, 23.37, 22.53, 48.57, 62.32], 4.39),
    "RLW": ([37.17, 63.77, 0.5759, 0.2410, 28.27, 24.18, 22.26, 47.05, 60.62], 7.78),
    "DWA": ([39.11, 65.31, 0.5510, 0.2285, 27.61, 23.18, 24.17, 50.18, 62.39], 3.57),
    "UW": ([36.87, 63.17, 0.5446, 0.2260, 27.04, 22.61, 23.54, 49.05, 63.65], 4.05),
    "MGDA": ([30.47, 59.90, 0.6070, 0.2555, 24.88, 19.45, 29.18, 56.88, 69.36], 1.38),
    "PCGrad": ([38.06, 64.64, 0.5550, 0.2325, 27.41, 22.80, 23.86, 49.83, 63.14], 3.97),
    "GradDrop": ([39.39, 65.12, 0.5455, 0.2279, 27.48, 22.96, 23.38, 49.44, 62.87], 3.58),
    "CAGrad": ([39.79, 65.49, 0.5486, 0.2250, 26.31, 21.58, 25.61, 52.36, 65.58], 0.20),
}


@pytest.mark.parametrize("method", sorted(NASH_MTL_TABLE2))
def test_flat_formula_reproduces_published_nyuv2_delta_m(method):
    values, published = NASH_MTL_TABLE2[method]
    values = [v / 100 if k in ("miou", "pixacc", "11.25", "22.5", "30") else v for k, v in zip(NYU_KEYS, values)]
    info = {k: MetricDecl(task=t, higher_is_better=bool(h)) for k, t, h in zip(NYU_KEYS, NYU_TASK, NYU_HIGHER)}
    got = delta_m(dict(zip(NYU_KEYS, values)), dict(zip(NYU_KEYS, NYU_STL)), info, "flat")
    # published values are rounded to 2 decimals, the inputs to 2-4 significant digits
    assert got == pytest.approx(published, abs=0.015)


def test_group_delta_m_on_real_results(tmp_path_factory):
    """Δm over a group of sub-tasks: over every sub-task it is the flat Δm; over one sub-task it
    is that sub-task's own relative change against the mean of the baseline runs, by hand."""
    from mtlbench.report.aggregate import group_delta_m, load_results, run_delta_m
    from tests.real_results import real_results

    loaded = load_results([real_results(tmp_path_factory)[1]])
    runs = group_delta_m(loaded, {"both": ["left", "right"], "left": ["left"], "none": ["nothing"]})
    flat = run_delta_m(loaded)["dm_flat"]
    assert runs["dm_group:both"].to_numpy() == pytest.approx(flat.to_numpy())
    base = runs.loc[runs["is_baseline"] & runs["unmitigated"], "test:left.acc"].mean()
    by_hand = -100 * (runs["test:left.acc"] - base) / base
    assert runs["dm_group:left"].to_numpy() == pytest.approx(by_hand.to_numpy())
    assert runs["dm_group:left"].abs().max() > 0 and runs["dm_group:none"].isna().all()
