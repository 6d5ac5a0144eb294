"""Paired comparisons, Holm's correction and claim verdicts on hand-made numbers, against
scipy and against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtlbench.report.ranking import rank_table
from mtlbench.report.stats import HELD, INCONCLUSIVE, NOT_HELD, Paired, combine, holm, mark, paired, verdict


def test_paired_test_matches_scipy_and_the_hand_computed_interval():
    a = {0: 1.0, 1: 2.5, 2: 0.5, 3: 3.0, 4: 1.5}
    b = {0: 2.0, 1: 2.0, 2: 1.5, 3: 4.5, 4: 2.0}
    r = paired(a, b)
    d = np.array([-1.0, 0.5, -1.0, -1.5, -0.5])
    assert r.n == 5 and r.diff == pytest.approx(d.mean())
    assert r.p == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    # mean -0.7, sd 0.758, t(0.975, 4) = 2.776: half-width 2.776 * 0.758 / sqrt(5) = 0.941
    assert (r.low, r.high) == pytest.approx((-0.7 - 0.9412, -0.7 + 0.9412), abs=1e-3)
    unpaired = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue
    assert r.p != pytest.approx(unpaired)  # pairing matters


def test_paired_test_uses_only_the_seeds_both_sides_have():
    r = paired({0: 1.0, 1: 2.0, 2: 4.0, 7: math.nan}, {1: 1.0, 2: 2.5, 3: 9.0, 7: 1.0})
    assert r.n == 2 and r.diff == pytest.approx(1.25)
    assert r.p == pytest.approx(stats.ttest_rel([2.0, 4.0], [1.0, 2.5]).pvalue)


def test_paired_test_edge_cases():
    assert not paired({0: 1.0}, {0: 2.0}).testable and paired({0: 1.0}, {0: 2.0}).diff == -1.0
    assert paired({}, {1: 2.0}).n == 0
    same_shift = paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 1.0, 2: 2.0})
    assert (same_shift.diff, same_shift.low, same_shift.high, same_shift.p) == (1.0, 1.0, 1.0, 0.0)
    equal = paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert equal.p == 1.0 and equal.diff == 0.0
    big = paired({0: 1e12 + 1, 1: 1e12 + 3, 2: 1e12 + 2}, {0: 1e12, 1: 1e12, 2: 1e12})
    assert big.diff == pytest.approx(2.0) and big.p == pytest.approx(stats.ttest_rel([1.0, 3.0, 2.0], [0.0, 0.0, 0.0]).pvalue)


def test_holm_by_hand():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept monotone 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, math.nan, 0.001]) == pytest.approx([0.5, math.nan, 0.002], nan_ok=True)
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4]) and holm([]) == []
    assert holm([0.6, 0.7, 0.8]) == [1.0, 1.0, 1.0]  # capped at 1


def test_marks_use_the_adjusted_p_value():
    r = Paired(5, -1.0, -1.5, -0.5, 0.01)
    assert mark(r, 0.01) == "better" and mark(Paired(5, 1.0, 0.5, 1.5, 0.01), 0.01) == "worse"
    assert mark(r, 0.08) == "n.s." and mark(r, math.nan) == "n/a"


def test_claim_verdicts_positive_negative_and_inconclusive():
    # claim: the mitigation lowers Δm (direction -1); margin 0.5 Δm points
    clearly_better = paired({s: -2.0 + 0.1 * s for s in range(5)}, {s: 0.0 for s in range(5)})
    clearly_worse = paired({s: 2.0 + 0.1 * s for s in range(5)}, {s: 0.0 for s in range(5)})
    noisy = paired({0: -3.0, 1: 2.5, 2: -1.0, 3: 1.8, 4: -2.0}, {s: 0.0 for s in range(5)})
    no_effect = paired({s: 0.05 * (-1) ** s for s in range(6)}, {s: 0.0 for s in range(6)})
    assert verdict(clearly_better, clearly_better.p, -1, 0.5) == HELD
    assert verdict(clearly_worse, clearly_worse.p, -1, 0.5) == NOT_HELD
    assert verdict(noisy, noisy.p, -1, 0.5) == INCONCLUSIVE
    assert no_effect.p > 0.05 and verdict(no_effect, no_effect.p, -1, 0.5) == NOT_HELD  # an effect of 0.5 is ruled out
    assert verdict(clearly_better, 0.2, -1, 0.5) == INCONCLUSIVE  # the correction took significance away
    assert verdict(paired({0: 1.0}, {0: 0.0}), math.nan, -1, 0.5) == INCONCLUSIVE
    # a claim that something increases
    assert verdict(clearly_worse, clearly_worse.p, +1, 0.5) == HELD
    assert combine([HELD, HELD], every=True) == HELD
    assert combine([HELD, INCONCLUSIVE], every=True) == INCONCLUSIVE
    assert combine([HELD, NOT_HELD, INCONCLUSIVE], every=True) == NOT_HELD
    assert combine([], every=True) == INCONCLUSIVE and combine([NOT_HELD], every=False) == NOT_HELD


def test_rank_table_pairs_by_seed_and_corrects_over_the_page():
    rows = [("ew", "none", True), ("a", "none", False), ("a", "recon", False), ("b", "none", False)]
    table = pd.DataFrame({
        "suite": "s", "task": "t", "backbone": "bb", "method": [r[0] for r in rows], "method_name": [r[0] for r in rows],
        "mitigation": [r[1] for r in rows], "mitigation_name": [r[1] for r in rows], "is_reference": [r[2] for r in rows],
        "unmitigated": [r[1] == "none" for r in rows], "dm_flat": 0.0, "dm_flat_std": 0.0, "dm_task": 0.0, "dm_task_std": 0.0,
    })  # fmt: skip
    seed_effect = [0.0, 3.0, -2.0, 1.0, 5.0]  # shared by every row of a seed: pairing removes it
    values = {("ew", "none"): 0.0, ("a", "none"): -1.0, ("a", "recon"): -1.2, ("b", "none"): 0.1}
    noise = [0.1, -0.2, 0.15, 0.0, -0.05]
    own = {("a", "recon"): [0.05, -0.03, 0.02, 0.0, -0.04]}
    runs = pd.DataFrame([
        {"suite": "s", "task": "t", "backbone": "bb", "method": m, "mitigation": g, "seed": s, "dm_task": 0.0,
         "dm_flat": v + seed_effect[s] + (noise[s] if m != "ew" else 0.0) + own.get((m, g), [0.0] * 5)[s]}
        for (m, g), v in values.items() for s in range(5)
    ])  # fmt: skip
    out = rank_table(table, runs, {"t": "flat"}).set_index(["method", "mitigation"])
    ew = runs[runs["method"] == "ew"].sort_values("seed")["dm_flat"].to_numpy()

    def p_vs(m, g, base):
        x = runs[(runs["method"] == m) & (runs["mitigation"] == g)].sort_values("seed")["dm_flat"].to_numpy()
        return stats.ttest_rel(x, base).pvalue

    a_none = runs[(runs["method"] == "a") & (runs["mitigation"] == "none")].sort_values("seed")["dm_flat"].to_numpy()
    raw = {
        ("a", "none", "vs_ew"): p_vs("a", "none", ew),
        ("a", "recon", "vs_ew"): p_vs("a", "recon", ew),
        ("b", "none", "vs_ew"): p_vs("b", "none", ew),
        ("a", "recon", "vs_none"): p_vs("a", "recon", a_none),
    }
    adjusted = dict(zip(raw, holm(list(raw.values()))))  # one family: the four comparisons on the page
    for (m, g, c), p in raw.items():
        assert out.loc[(m, g), f"{c}_p"] == pytest.approx(p)
        assert out.loc[(m, g), f"{c}_p_holm"] == pytest.approx(adjusted[(m, g, c)])
    assert out.loc[("a", "none"), "vs_ew"] == "better"  # 1 point better, seed effects of up to 5 removed
    assert out.loc[("b", "none"), "vs_ew"] in ("worse", "n.s.")
    assert out.loc[("ew", "none"), "vs_ew"] == "reference" and out.loc[("a", "none"), "vs_none"] == ""
    assert out.loc[("a", "recon"), "vs_none_diff"] == pytest.approx(-0.2, abs=1e-9)
    assert out.loc[("a", "recon"), "vs_none_n"] == 5
    welch = stats.ttest_ind(a_none, ew, equal_var=False).pvalue
    assert welch > 0.05  # unpaired, the seed effects would hide the difference


def test_batched_comparisons_equal_one_scipy_call_each_bit_for_bit():
    """paired_many stacks the t-tests of equally many seeds into one scipy call; every row must
    give exactly what scipy's paired t-test on that row alone gives (seeds 2..12, scales from
    1e-6 to 1e6, a few rows that the edge rules decide)."""
    import warnings

    from mtlbench.report.stats import LEVEL, Paired, paired_many

    rng = np.random.default_rng(0)
    pairs = []
    for n in range(2, 13):
        for scale in (1e-6, 1.0, 1e6):
            for _ in range(40):
                a = {s: float(v) for s, v in enumerate(rng.normal(0, scale, n))}
                b = {s: float(v) for s, v in enumerate(rng.normal(0.3 * scale, scale, n))}
                pairs.append((a, b))
    pairs += [({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0}), ({0: 1.0}, {0: 2.0}), ({}, {1: 1.0})]
    batched = paired_many(pairs)
    for (a, b), got in zip(pairs, batched):
        seeds = sorted(set(a) & set(b))
        d = np.array([a[s] - b[s] for s in seeds])
        if len(d) < 2 or d.std(ddof=1) <= 1e-12 * max(abs(d.mean()), 1e-300):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_rel(d, np.zeros(len(d))).pvalue)
        half = float(stats.t.ppf(0.5 + LEVEL / 2, len(d) - 1)) * float(d.std(ddof=1)) / math.sqrt(len(d))
        mean = float(d.mean())
        assert got == Paired(len(d), mean, mean - half, mean + half, p)
    assert batched[-3].p == 0.0 and math.isnan(batched[-2].p) and batched[-1].n == 0
