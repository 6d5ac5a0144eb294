"""Leaderboard ranking: Δm in each task's declared convention, the rank it gives, and paired
comparisons against equal weighting and against the same method without its mitigation.

A row is compared with the reference row (the unmitigated runs of the method whose class
declares the role ``reference``: ``ew``) of the same suite, task and backbone, and a mitigated
row with its method's unmitigated row, seed by seed (:func:`mtlbench.report.stats.paired`:
paired t-test of the per-seed Δm, mean difference with a 95% CI). The comparisons of one
task × backbone page are one family, Holm-corrected together; the marks (better / worse /
n.s.) use the corrected p-values. Reads aggregated tables only (no torch).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from mtlbench.report.aggregate import CONVENTIONS, GROUP, ROW, unmitigated_labels
from mtlbench.report.stats import ALPHA, NOT_TESTABLE, Paired, holm, mark, paired_many

COMPARISONS = ("vs_ew", "vs_none")


def rank_table(table: pd.DataFrame, runs: pd.DataFrame, conventions: Mapping[str, str], alpha: float = ALPHA) -> pd.DataFrame:
    """Add to ``table`` (from :func:`~mtlbench.report.aggregate.summarize`) the declared Δm and its rank,
    and the paired comparisons computed from the per-run Δm in ``runs`` (from
    :func:`~mtlbench.report.aggregate.run_delta_m`). ``conventions`` maps a task to ``flat`` or
    ``task`` (default ``flat``).

    New columns: ``dm_convention``, ``dm``, ``dm_std`` (declared), ``dm_other``, ``dm_other_std``,
    ``dm_vs_none`` (declared Δm change of the means over the same method without mitigation),
    ``rank`` (by declared Δm, 1 = best); for each comparison C in ``vs_ew`` and ``vs_none``:
    ``C`` (better / worse / n.s. / n/a; for vs_ew also ``reference`` on the reference row; empty
    where there is nothing to compare with), ``C_n`` (paired seeds), ``C_diff``, ``C_low``,
    ``C_high`` (mean per-seed difference of the declared Δm, 95% CI), ``C_p`` and ``C_p_holm``.
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

    per_row: dict[tuple, dict[str, dict[int, float]]] = {}  # row -> column -> seed -> per-seed Δm
    if not runs.empty:
        keys = runs[GROUP + ROW].itertuples(index=False, name=None)
        for key, seed, flat, task in zip(keys, runs["seed"], runs["dm_flat"], runs["dm_task"]):
            row_seeds = per_row.setdefault(key, {"dm_flat": {}, "dm_task": {}})
            row_seeds["dm_flat"][int(seed)] = float(flat)
            row_seeds["dm_task"][int(seed)] = float(task)
    refs = {group: _reference_key(rows) for group, rows in out.groupby(GROUP, sort=False)}
    bases = {group: _base_keys(rows) for group, rows in out.groupby(GROUP, sort=False)}
    records = out[GROUP + ROW + ["dm_convention"]].to_dict("records")
    found: dict[str, list[tuple[str, Paired | None]]] = {c: [] for c in COMPARISONS}
    todo: list[tuple[str, int, dict[int, float], dict[int, float]]] = []  # (comparison, row, a, b): tested in one batch
    for i, row in enumerate(records):
        group = tuple(row[k] for k in GROUP)
        key, c = (row["method"], row["mitigation"]), row["dm_convention"]

        def seeds(k: tuple[str, str], group: tuple = group, c: str = c) -> dict[int, float]:
            return (per_row.get(group + k) or {}).get(f"dm_{c}", {})

        ref, base = refs[group], bases[group].get(key)
        found["vs_ew"].append(("reference" if ref is not None and key == ref else "", None))
        if ref is not None and key != ref:
            todo.append(("vs_ew", i, seeds(key), seeds(ref)))
        found["vs_none"].append(("", None))
        if base is not None:
            todo.append(("vs_none", i, seeds(key), seeds(base)))
    for (c, i, _, _), outcome in zip(todo, paired_many([(a, b) for _, _, a, b in todo])):
        found[c][i] = ("", outcome)
    # Holm within each page (group), over both kinds of comparison
    adjusted: dict[str, list[float]] = {c: [float("nan")] * len(records) for c in COMPARISONS}
    by_group: dict[tuple, list[tuple[str, int]]] = {}
    for i, row in enumerate(records):
        by_group.setdefault(tuple(row[k] for k in GROUP), []).extend((c, i) for c in COMPARISONS)
    for members in by_group.values():
        tested = [(c, i) for c, i in members if found[c][i][1] is not None]
        for (c, i), p in zip(tested, holm([found[c][i][1].p for c, i in tested])):  # type: ignore[union-attr]
            adjusted[c][i] = p
    for c in COMPARISONS:
        cols: dict[str, list[Any]] = {k: [] for k in ("", "_n", "_diff", "_low", "_high", "_p", "_p_holm")}
        for (label, result), p_holm in zip(found[c], adjusted[c]):
            r = result or NOT_TESTABLE
            cols[""].append(label if result is None else mark(r, p_holm, alpha=alpha))
            cols["_n"].append(r.n)
            cols["_diff"].append(r.diff)
            cols["_low"].append(r.low)
            cols["_high"].append(r.high)
            cols["_p"].append(r.p)
            cols["_p_holm"].append(p_holm)
        for suffix, values in cols.items():
            out[c + suffix] = values
    return out.sort_values(GROUP + ["rank", "method", "mitigation"]).reset_index(drop=True)


def _base_keys(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    """For each mitigated row of a group, (method label, mitigation label) of the same method
    label's unmitigated row (:func:`~mtlbench.report.aggregate.unmitigated_labels`)."""
    plain = unmitigated_labels(rows)
    return {
        (method, mitigation): (method, plain[method])
        for method, mitigation in rows[~rows["unmitigated"]][ROW].itertuples(index=False, name=None)
        if method in plain
    }


def _reference_key(rows: pd.DataFrame) -> tuple[str, str] | None:
    """(method label, mitigation label) of a group's reference row: the unmitigated row of the
    method that declares the role ``reference`` (under its own name when it has several labels);
    None when there is no such row or it is ambiguous."""
    plain = rows[rows["is_reference"] & rows["unmitigated"]]
    if len(plain) > 1:
        plain = plain[plain["method"] == plain["method_name"]]
    return (str(plain["method"].iloc[0]), str(plain["mitigation"].iloc[0])) if len(plain) == 1 else None
