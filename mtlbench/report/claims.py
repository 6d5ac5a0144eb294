"""The papers' claims about their mitigations, checked on a grid's own runs.

Each mitigation declares its paper's claims (``Mitigation.claims``); result files record them
(``mitigation_info.claims``), so this stage reads them without importing any plugin.

For each suite × task × backbone that runs a mitigation beside ``none``, every mitigated row
is compared with the same method without mitigation, seed by seed
(:func:`mtlbench.report.stats.paired`), on two measures:

- ΔΔm: the change of the task's declared Δm (lower is better);
- Δp%: the change of the conflict incidence on the reference parameter set — the unmodified
  model's whole shared trunk, the set every mitigation is measured on (``conflict.reference``;
  p% on the updated parameters is not comparable across mitigations).

All comparisons of one suite × task × backbone are one family, Holm-corrected together. A
comparison supports a claim (held), refutes it (not held: significant the other way, or the 95%
CI rules out an effect of the claim's size — ``MARGINS``) or neither (inconclusive); a claim
about every method holds when it holds for each, fails when it fails for any
(:func:`mtlbench.report.stats.verdict`, :func:`~mtlbench.report.stats.combine`); each
mitigation entry (label) of a suite is judged on its own. Reads numbers only (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mtlbench.report.aggregate import GROUP, unmitigated_of
from mtlbench.report.stats import INCONCLUSIVE, NOT_TESTABLE, Paired, combine, holm, paired_many, verdict


@dataclass(frozen=True)
class Claim:
    """One line a paper claims about its mitigation, and how it is checked (as the mitigation
    declares it: ``Mitigation.claims``, recorded in each result's ``mitigation_info``)."""

    text: str
    source: str
    mitigation: str  # the mitigation plugin's name
    measure: str  # "dm" (ΔΔm) or "p_ref" (Δp% on the reference set)
    kinds: tuple[str, ...] = ()  # method kinds the claim is about; () = every method


def declared_claims(mitigation_info: Mapping[str, Mapping[str, Any]]) -> tuple[Claim, ...]:
    """The claims the mitigations declare, from their ``mitigation_info`` as result files record
    it (mitigation plugin name -> info), in the order of the names, then of the declarations."""
    return tuple(
        Claim(
            str(c["text"]),
            str(c.get("source") or info.get("citation") or ""),
            name,
            str(c["measure"]),
            tuple(c.get("kinds") or ()),
        )
        for name, info in sorted(mitigation_info.items())
        for c in info.get("claims") or ()
    )


# the smallest effect each claim is about: Δm points, p% points (a CI that excludes it refutes)
MARGINS = {"dm": 0.5, "p_ref": 5.0}
MEASURE_NAMES = {"dm": "ΔΔm (points)", "p_ref": "Δp% on the reference set (points)"}


@dataclass
class Comparison:
    """One mitigated row against the same method without mitigation, on one measure."""

    group: tuple[str, str, str]
    method: str
    kind: str
    mitigation: str  # the row's mitigation label
    mitigation_name: str
    measure: str
    result: Paired
    p_holm: float = math.nan
    verdict: str = INCONCLUSIVE
    step_ratio: float = math.nan  # mean step time, mitigated / unmitigated
    added_params: float = math.nan  # parameters added by the mitigation (mean over seeds)


@dataclass
class ClaimVerdict:
    claim: Claim
    group: tuple[str, str, str]
    mitigation: str  # the label of the suite's mitigation entry judged (one verdict per entry)
    verdict: str
    counts: dict[str, int]  # per-method verdicts: held / not held / inconclusive
    n_seeds: int  # common seeds of the comparisons (the smallest)


def compare(runs: pd.DataFrame, conventions: Mapping[str, str]) -> list[Comparison]:
    """Every mitigated row of every group against its method's unmitigated row, on both
    measures, with Holm-corrected p-values and verdicts (direction: both claims say lower)."""
    out: list[Comparison] = []
    if runs.empty:
        return out
    multi = runs[~runs["is_baseline"]]
    if multi["unmitigated"].all():  # nothing to compare (most grids): skip the grouping
        return out
    families: list[list[Comparison]] = []  # one per group: Holm-corrected together
    todo: list[tuple[dict[int, float], dict[int, float]]] = []  # every comparison's two sides, tested in one batch
    columns = [*GROUP, "method", "mitigation", "mitigation_name", "method_kind", "unmitigated", "seed",
               "step_time_ms", "params", "p_pct_ref", "dm_flat", "dm_task"]  # fmt: skip
    groups: dict[tuple, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for r in multi[[c for c in columns if c in multi]].to_dict("records"):
        groups.setdefault(tuple(r[k] for k in GROUP), {}).setdefault((r["method"], r["mitigation"]), []).append(r)
    for group in sorted(groups):
        column = f"dm_{conventions.get(str(group[1]), 'flat')}"
        found: list[Comparison] = []
        by_row = dict(sorted(groups[group].items()))
        plain = unmitigated_of((m, r["mitigation"], r["mitigation_name"]) for (m, _), g in by_row.items() for r in g
                               if r["unmitigated"])  # fmt: skip
        for (method, mitigation), g in by_row.items():
            if bool(g[0]["unmitigated"]) or method not in plain:
                continue
            base = by_row[(method, plain[method])]
            step_ratio = _mean(g, "step_time_ms") / _mean(base, "step_time_ms")
            added_params = _mean(g, "params") - _mean(base, "params")
            for measure, col in (("dm", column), ("p_ref", "p_pct_ref")):
                todo.append((_seeds(g, col), _seeds(base, col)))
                found.append(
                    Comparison(
                        group,  # type: ignore[arg-type]
                        str(method),
                        str(g[0]["method_kind"]),
                        str(mitigation),
                        str(g[0]["mitigation_name"]),
                        measure,
                        NOT_TESTABLE,
                        step_ratio=step_ratio,
                        added_params=added_params,
                    )
                )
        families.append(found)
    results = iter(paired_many(todo))
    for found in families:
        for c in found:
            c.result = next(results)
        for c, p in zip(found, holm([c.result.p for c in found])):
            c.p_holm = p
            c.verdict = verdict(c.result, p, -1, MARGINS[c.measure])
        out += found
    return out


def judge(comparisons: list[Comparison], claims: tuple[Claim, ...]) -> list[ClaimVerdict]:
    """Each claim's verdict in each group that has comparisons it is about, once per mitigation
    entry of the claim's plugin: two variants of one mitigation in a suite (e.g. Recon at a
    parameter budget and at K layers, under two labels) are judged apart, never pooled."""
    out = []
    groups = sorted({c.group for c in comparisons})
    for group in groups:
        for claim in claims:
            about = [
                c
                for c in comparisons
                if c.group == group
                and c.mitigation_name == claim.mitigation
                and c.measure == claim.measure
                and (not claim.kinds or c.kind in claim.kinds)
            ]
            for label in sorted({c.mitigation for c in about}):
                entry = [c for c in about if c.mitigation == label]
                verdicts = [c.verdict for c in entry]
                out.append(
                    ClaimVerdict(
                        claim,
                        group,
                        label,
                        combine(verdicts, every=True),
                        {v: verdicts.count(v) for v in ("held", "not held", "inconclusive")},
                        min(c.result.n for c in entry),
                    )
                )
    return out


def _mean(rows: list[dict[str, Any]], column: str) -> float:
    """The mean of a column over one row's runs (values that are not numbers left out; none: NaN)."""
    values = [float(r[column]) for r in rows if _number(r.get(column))]
    return float(np.mean(values)) if values else math.nan


def _seeds(rows: list[dict[str, Any]], column: str) -> dict[int, float]:
    """seed → value of ``column`` over one row's runs."""
    return {int(r["seed"]): float(r[column]) for r in rows}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and not math.isnan(float(v))
