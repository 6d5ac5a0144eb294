"""The pages about papers: the published tables beside this grid's runs (reproduction) and the
mitigations' claims judged on its paired runs."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import pandas as pd

from mtlbench.report.aggregate import GROUP
from mtlbench.site.data import SiteData, delta_m_conventions, group_page
from mtlbench.site.pages import CONVENTION_NAMES, Page, PageType

# --------------------------------------------------------------------------- reproduction


def reproduction_pages(data: SiteData) -> Iterator[Page]:
    """``reproduction.html``: each published table (``leaderboard/published/``) beside our runs of
    its suite (:func:`mtlbench.report.published.reproduction_table`), with the table's own Δm check, and
    ``reproduction.csv``. Nothing when no folder of published tables is given or it holds none."""
    from mtlbench.report.protocols import FIELDS, protocols_for
    from mtlbench.report.published import check_table, load_published, reproduction_table

    tables = load_published(data.published) if data.published is not None else []
    if not tables:
        return
    protocols = protocols_for(data.published)
    view = reproduction_table(tables, data.table, data.loaded.metric_info)
    sections = []
    for t in tables:
        rows = view[view["table"] == t.id]
        metrics = list(dict.fromkeys(rows["metric"]))
        methods = [
            {
                "method": m,
                "ours": g["ours_method"].iloc[0],
                "mitigation": g["ours_mitigation"].iloc[0],
                "n_seeds": int(g["n_seeds"].iloc[0]),
                "note": g["note"].iloc[0],
                "cells": {r["metric"]: r for r in g.to_dict("records")},
            }
            for m, g in rows.groupby("method", sort=False)
        ]
        checks = check_table(t)
        fillable = [m for m in methods if m["ours"]]
        sections.append(
            {
                "t": t,
                "metrics": metrics,
                "methods": methods,
                "n_fillable": len(fillable),
                "n_filled": sum(1 for m in fillable if m["n_seeds"] > 0),
                "n_checked": sum(c.recomputed is not None for c in checks),
                "n_inconsistent": sum(1 for c in checks if c.consistent is False or c.dm_check == "inconsistent"),
                "flagged": [c for c in checks if c.dm_check != "recompute"],
                "protocol": protocols.get((t.reproduce["suite"], t.reproduce["task"])),
            }
        )
    yield Page(
        "reproduction.html",
        "reproduction.html",
        {"sections": sections, "protocol_fields": FIELDS},
        title="Reproduction: published tables beside our runs",
    )
    yield Page("reproduction.csv", text=view.to_csv(index=False))


# --------------------------------------------------------------------------- claims


def claims_pages(data: SiteData) -> Iterator[Page]:
    """``claims.html``: the claims the mitigations' papers make (as each mitigation declares them), judged on
    every suite × task × backbone whose runs compare a mitigation with none
    (:mod:`mtlbench.report.claims`), with the budget each verdict holds for and the cost
    beside it. Nothing when no runs use a mitigation."""
    from mtlbench.report.claims import MARGINS, MEASURE_NAMES, compare, declared_claims, judge

    conventions = delta_m_conventions(data.task_info)
    comparisons = compare(data.runs, conventions)
    if not comparisons:
        return
    claims = declared_claims(data.mitigation_info)
    verdicts = judge(comparisons, claims)
    groups: list[dict[str, Any]] = []
    for group in sorted({c.group for c in comparisons}):
        runs = data.runs[(data.runs[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)]
        epochs = [max(d.epochs) for p in runs["path"] if (d := data.details.get(str(p))) is not None and d.epochs]
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c in (c for c in comparisons if c.group == group):
            row = rows.setdefault(
                (c.method, c.mitigation),
                {"method": c.method, "kind": c.kind, "mitigation": c.mitigation, "step_ratio": c.step_ratio,
                 "added_params": c.added_params},
            )  # fmt: skip
            row[c.measure] = c
        groups.append(
            {
                "suite": group[0],
                "task": group[1],
                "backbone": group[2],
                "page": group_page(*group),
                "convention": CONVENTION_NAMES[conventions.get(group[1], "flat")],
                "seeds": sorted({int(s) for s in runs["seed"]}),
                "epochs": sorted(set(epochs)),
                "verdicts": [v for v in verdicts if v.group == group],
                "rows": [rows[k] for k in sorted(rows, key=lambda k: (k[1], k[0]))],
            }
        )
    yield Page(
        "claims.html",
        "claims.html",
        {"claims": claims, "margins": MARGINS, "measures": MEASURE_NAMES, "groups": groups},
        title="Claims: do the mitigations do what their papers say?",
    )


class ClaimsPages(PageType):
    name = "claims-pages"
    description = "the seed papers' claims about their mitigations, judged on this grid's paired runs"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return claims_pages(data)


class ReproductionPages(PageType):
    name = "reproduction-pages"
    description = "the papers' published tables beside this suite's runs"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return reproduction_pages(data)
