"""Leaderboard ranking: Δm in each task's declared convention, the rank it gives, and a
significance mark against equal weighting.

The significance mark is Welch's unequal-variance t-test (two-sided) between a row's per-seed Δm
values and those of the reference row (the unmitigated runs of the method whose class declares
the role ``reference``: ``ew``) of the same suite,
task and backbone. It needs at least two seeds on both sides; with three seeds it only flags
large, consistent gaps, which is the point: a gap without the mark may be seed noise.
Reads aggregated tables only (no torch).
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from mtlbench.report.aggregate import CONVENTIONS, GROUP, ROW

ALPHA = 0.05


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test; NaN with fewer than two values a side or no variance."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def significance(p: float, mean: float, ref_mean: float, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` (lower Δm is better) when p < alpha, ``n.s.`` above, ``n/a`` untestable."""
    if math.isnan(p):
        return "n/a"
    if p >= alpha:
        return "n.s."
    return "better" if mean < ref_mean else "worse"


def rank_table(table: pd.DataFrame, runs: pd.DataFrame, conventions: Mapping[str, str], alpha: float = ALPHA) -> pd.DataFrame:
    """Add to ``table`` (from :func:`~mtlbench.report.aggregate.summarize`) the declared Δm and its rank,
    and the Welch test against the reference row computed from the per-run Δm in ``runs``
    (from :func:`~mtlbench.report.aggregate.run_delta_m`). ``conventions`` maps a task to ``flat`` or
    ``task`` (default ``flat``).

    New columns: ``dm_convention``, ``dm``, ``dm_std`` (declared), ``dm_other``, ``dm_other_std``,
    ``dm_vs_none`` (declared Δm change over the same method without mitigation), ``rank`` (by
    declared Δm, 1 = best), ``vs_ew`` (better / worse / n.s. / n/a / reference /
    empty when the group has no reference) and ``vs_ew_p``.
    """
    out = table.copy()
    if out.empty:
        return out
    conv = out["task"].map(lambda t: conventions.get(t, "flat"))
    bad = sorted(set(conv) - set(CONVENTIONS))
    if bad:
        raise ValueError(f"unknown Δm convention(s) {bad}; valid: {', '.join(CONVENTIONS)}")
    out["dm_convention"] = conv
    flat = (conv == "flat").to_numpy()
    for col, first, second in (("dm", "flat", "task"), ("dm_other", "task", "flat")):
        out[col] = np.where(flat, out[f"dm_{first}"], out[f"dm_{second}"])
        out[f"{col}_std"] = np.where(flat, out[f"dm_{first}_std"], out[f"dm_{second}_std"])
    if "dm_flat_vs_none" in out:
        out["dm_vs_none"] = np.where(flat, out["dm_flat_vs_none"], out["dm_task_vs_none"])
    out["rank"] = out.groupby(GROUP)["dm"].rank(method="min", na_option="bottom").astype(int)

    per_row = {key: g for key, g in runs.groupby(GROUP + ROW, sort=False)} if not runs.empty else {}
    refs = {group: _reference_key(rows) for group, rows in out.groupby(GROUP, sort=False)}
    marks, pvalues = [], []
    for row in out[GROUP + ROW + ["dm_convention"]].to_dict("records"):
        group = tuple(row[k] for k in GROUP)
        ref, key = refs[group], (row["method"], row["mitigation"])
        if ref is None or key == ref:
            marks.append("" if ref is None else "reference")
            pvalues.append(math.nan)
            continue
        c = row["dm_convention"]
        a = per_row[group + key][f"dm_{c}"].dropna().to_numpy()
        b = per_row[group + ref][f"dm_{c}"].dropna().to_numpy()
        p = welch_p(a, b)
        pvalues.append(p)
        marks.append(significance(p, float(np.mean(a)) if len(a) else math.nan, float(np.mean(b)) if len(b) else math.nan, alpha))
    out["vs_ew"], out["vs_ew_p"] = marks, pvalues
    return out.sort_values(GROUP + ["rank", "method", "mitigation"]).reset_index(drop=True)


def _reference_key(rows: pd.DataFrame) -> tuple[str, str] | None:
    """(method label, mitigation label) of a group's reference row: the unmitigated row of the
    method that declares the role ``reference`` (under its own name when it has several labels);
    None when there is no such row or it is ambiguous."""
    plain = rows[rows["is_reference"] & rows["unmitigated"]]
    if len(plain) > 1:
        plain = plain[plain["method"] == plain["method_name"]]
    return (str(plain["method"].iloc[0]), str(plain["mitigation"].iloc[0])) if len(plain) == 1 else None
