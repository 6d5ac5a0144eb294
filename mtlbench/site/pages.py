"""The leaderboard's page types: one per suite × task × backbone and one per method, and the
index (run pages: :mod:`mtlbench.site.run_pages`; the claims and reproduction pages:
:mod:`mtlbench.site.paper_pages`). Each is a function of :class:`~mtlbench.site.data.SiteData` yielding
:class:`Page` objects that name their template and context.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd

from mtlbench.core.registry import Plugin
from mtlbench.report.aggregate import GROUP, ROW
from mtlbench.site import plots
from mtlbench.site.data import RunDetail, SiteData, group_page, method_page
from mtlbench.site.format import finite

CONVENTION_NAMES = {"flat": "flat", "task": "per-task"}
MAX_CURVES = 10  # lines per training-curve panel
FILTERS = {"task": "task", "backbone": "backbone", "mitigation": "mitigation", "kind": "method kind"}


@dataclass
class Page:
    """One file of the site: its path ("/"-separated) and either a template with its context or,
    for a download, its ``text``. Pages with a ``title`` are linked from the index under "More pages"."""

    path: str
    template: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    text: str | None = None
    # An incremental page: ``key`` names everything its content depends on besides the site's
    # code; when the previous build wrote the page under the same key it is kept as it is, and
    # ``lazy`` (which builds the context) is not called.
    key: str = ""
    lazy: Callable[[], dict[str, Any]] | None = None


@dataclass
class Plot:
    title: str
    caption: str
    svg: str


def filter_options(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """(row attribute, label, sorted distinct values) for each filterable column present."""
    return [(k, FILTERS[k], sorted({str(r[k]) for r in rows})) for k in keys]


def row_records(data: SiteData, table: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as dicts with the links and runs (seed, page, path) each row needs."""
    runs = data.runs_by_row()
    out = []
    for r in table.to_dict("records"):
        r["kind"] = r["method_kind"]
        r["group_page"] = group_page(r["suite"], r["task"], r["backbone"])
        r["method_page"] = method_page(r["method_name"])
        r["runs"] = runs.get(tuple(r[k] for k in GROUP + ROW), [])
        r["search"] = f"{r['method']} {r['method_name']}".lower()
        out.append(r)
    return out


# --------------------------------------------------------------------------- task × backbone


def group_pages(data: SiteData) -> Iterator[Page]:
    """One page per suite × task × backbone. All pages' plots are drawn in one batch first, so
    that a build with several workers draws them in parallel."""
    if data.table.empty:
        return
    pages = []
    hosts_of = data.runs.groupby(GROUP)["host"].nunique().to_dict() if "host" in data.runs else {}
    for (suite, task, backbone), rows in data.table.groupby(GROUP, sort=True):
        version = str(rows["task_version"].iloc[0])
        info = data.metric_info(task, version)
        records = row_records(data, rows)
        convention = str(rows["dm_convention"].iloc[0])
        has_base = any(is_baseline_row(r) for r in records)
        hosts = int(hosts_of.get((suite, task, backbone), 1))
        pages.append(
            (
                Page(
                    group_page(suite, task, backbone),
                    "group.html",
                    {
                        "suite": suite,
                        "task": task,
                        "backbone": backbone,
                        "task_version": version,
                        "task_info": data.task_info.get(task) or {},
                        "rows": records,
                        "metrics": list(info.items()),
                        "has_baseline": has_base,
                        "hosts": hosts,
                        "convention": CONVENTION_NAMES[convention],
                        "other_convention": CONVENTION_NAMES["task" if convention == "flat" else "flat"],
                        "filters": filter_options(records, ["mitigation", "kind"]),
                        "tuning": [f for f in data.tuning if f.group == (suite, task, backbone)],
                    },
                ),
                group_plots(data, records, task, version, convention),
            )
        )
    svgs = iter(data.plots.draw_many([job for _, specs in pages for _, _, job in specs]))
    for page, specs in pages:
        page.context["plots"] = [Plot(title, caption, next(svgs)) for title, caption, _ in specs]
        yield page


def is_baseline_row(r: dict[str, Any]) -> bool:
    """The single-task baseline's unmitigated row (what Δm is measured against)."""
    return bool(r["is_baseline"] and r["unmitigated"])


def row_label(r: dict[str, Any]) -> str:
    return r["method"] if r["unmitigated"] else f"{r['method']}+{r['mitigation']}"


def _point(r: dict[str, Any], x: str, y: str, y_std: str | None = None) -> plots.Point:
    return plots.Point(
        row_label(r),
        str(r["kind"]),
        str(r["mitigation"]),
        r[x],
        r[y],
        r.get(f"{x}:std", math.nan),
        r.get(y_std or f"{y}:std", math.nan),
    )


def group_plots(
    data: SiteData, records: list[dict[str, Any]], task: str, version: str, convention: str
) -> list[tuple[str, str, plots.PlotJob]]:
    """(title, caption, plot to draw) for each plot of a task × backbone page that has data."""
    out: list[tuple[str, str, plots.PlotJob]] = []
    main = data.main_metrics(task, version)
    info = data.metric_info(task, version)
    multi = [r for r in records if not r["is_baseline"]]
    if len(main) == 2 and multi:
        out += tradeoff_plot(records, multi, main, info)
    pts = [_point(r, "p_pct", "dm", "dm_std") for r in multi if finite(r["p_pct"], r["dm"])]
    if pts:
        out.append(
            (
                "Δm against conflict incidence",
                f"Δm ({CONVENTION_NAMES[convention]}, lower is better) against p%, mean ± std over seeds.",
                (plots.dm_conflict_plot, (pts, CONVENTION_NAMES[convention]), {}),
            )
        )
    heat = layer_matrix(data, multi)
    if heat is not None:
        out.append(
            (
                "Per-layer conflict",
                "p% of each shared layer (Recon's layers: every parameterised module of the trunk), mean over seeds.",
                (plots.layer_heatmap, heat, {}),
            )
        )
    panels = curve_panels(data, records, main, info)
    if panels:
        shown = "" if len(records) <= MAX_CURVES else f" Shown: stl, ew and the best rows by Δm, {MAX_CURVES} in all."
        out.append(
            (
                "Training curves",
                "Per epoch, mean over seeds: training loss (mean over sub-tasks) and the "
                f"validation value of each sub-task's main metric.{shown}",
                (plots.curves_plot, (panels, "epoch"), {}),
            )
        )
    return out


def tradeoff_plot(
    records: list[dict[str, Any]], multi: list[dict[str, Any]], main: dict[str, str], info: dict
) -> list[tuple[str, str, plots.PlotJob]]:
    """The two-task trade-off: each method's point, the fixed-weight front, the single-task models."""
    (_, ka), (_, kb) = main.items()
    cols = (f"test:{ka}", f"test:{kb}")
    pts = [_point(r, *cols) for r in multi if not r["is_front"] and finite(r[cols[0]], r[cols[1]])]
    fixed = [_point(r, *cols) for r in multi if r["is_front"] and finite(r[cols[0]], r[cols[1]])]
    stl = next((_point(r, *cols) for r in records if is_baseline_row(r)), None)
    if not (pts or fixed):
        return []
    la, lb = info[ka].label or ka, info[kb].label or kb
    args = (pts, fixed, stl, la, lb, info[ka].higher_is_better, info[kb].higher_is_better)
    sweep = (
        "Dashed green: the fixed-weight sweep (method fixed), the reference front. "
        if fixed
        else "No fixed-weight runs (method fixed) here to draw the reference front. "
    )
    caption = (
        f"Test {la} against {lb}, mean ± std over seeds. Filled: not dominated by another method; hollow: dominated. "
        f"{sweep}Star: the single-task models."
    )
    return [("Trade-off between the two tasks", caption, (plots.pareto_plot, args, {}))]


def _details(data: SiteData, r: dict[str, Any]) -> list[RunDetail]:
    return [data.details[path] for _, _, path in r["runs"] if path in data.details]


def layer_matrix(data: SiteData, records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[list[float]]] | None:
    """(row labels, layer names, per-layer p% averaged over seeds) for rows with layer statistics."""
    layers: dict[str, None] = {}
    rows, values = [], []
    for r in records:
        sums: dict[str, list[float]] = {}
        for d in _details(data, r):
            for name, p in zip(d.layers, d.layer_p):
                layers.setdefault(name)
                sums.setdefault(name, []).append(p)
        if sums:
            rows.append(row_label(r))
            values.append({n: sum(v) / len(v) for n, v in sums.items()})
    if not rows:
        return None
    names = list(layers)
    return rows, names, [[v.get(n, math.nan) for n in names] for v in values]


def curve_panels(data: SiteData, records: list[dict[str, Any]], main: dict[str, str], info: dict) -> dict:
    """{panel title: {row label: (epochs, mean over seeds)}} for the training loss and the first
    three sub-tasks' main validation metric."""
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {"training loss": {}}
    keys = list(main.values())[:3]
    for k in keys:
        panels[f"val {info[k].label or k}"] = {}
    for r in curve_rows(records):
        ds = [d for d in _details(data, r) if d.epochs]
        if not ds:
            continue
        label = row_label(r)
        epochs = min((d.epochs for d in ds), key=len)
        panels["training loss"][label] = (epochs, _mean_lists([d.loss for d in ds], len(epochs)))
        for k in keys:
            series = [d.val[k] for d in ds if k in d.val]
            if series:
                panels[f"val {info[k].label or k}"][label] = (epochs, _mean_lists(series, len(epochs)))
    return {t: lines for t, lines in panels.items() if lines}


def curve_rows(records: list[dict[str, Any]], n: int = MAX_CURVES) -> list[dict[str, Any]]:
    """The rows whose curves are drawn: all of them, or stl, ew and the best by rank up to ``n``."""
    if len(records) <= n:
        return records
    keep = [r for r in records if r["is_baseline"] or r["vs_ew"] == "reference"]
    keep += [r for r in records if r not in keep][: max(n - len(keep), 0)]
    return sorted(keep, key=lambda r: r["rank"])


def _mean_lists(lists: list[list[float]], n: int) -> list[float]:
    out = []
    for i in range(n):
        vals = [v[i] for v in lists if i < len(v) and finite(v[i])]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


# --------------------------------------------------------------------------- methods


def method_pages(data: SiteData) -> Iterator[Page]:
    names = set(data.runs.get("method_name", [])) | set(data.failed.get("method_name", []))
    records = row_records(data, data.table)
    for name in sorted(names, key=str):
        rows = [r for r in records if r["method_name"] == name]
        for r in rows:
            d = _details(data, r)
            r["options"] = json.dumps(d[0].options, sort_keys=True) if d else ""
        failed = data.failed[data.failed["method_name"] == name].to_dict("records") if not data.failed.empty else []
        info = data.method_info.get(str(name)) or {}
        kinds = sorted({str(r["kind"]) for r in rows} | {str(f.get("method_kind")) for f in failed})
        yield Page(
            method_page(name),
            "method.html",
            {
                "name": name,
                "info": info,
                "kind": info.get("kind") or ", ".join(kinds),
                "rows": rows,
                "failed": failed,
                "filters": filter_options(rows, ["task", "backbone", "mitigation"]),
            },
        )


# --------------------------------------------------------------------------- index


def index_page(data: SiteData, listed: Sequence[Page]) -> Page:
    records = row_records(data, data.table)
    groups = []
    for key, rows in pd.DataFrame(records).groupby(GROUP, sort=True) if records else []:
        rows = rows.sort_values(["rank", "method"]).to_dict("records")
        best = next((r for r in rows if not r["is_baseline"] and finite(r["dm"])), None)
        groups.append(
            {
                "suite": key[0],
                "task": key[1],
                "backbone": key[2],
                "page": rows[0]["group_page"],
                "n_methods": len(rows),
                "n_runs": int(sum(r["n_seeds"] for r in rows)),
                "best": best,
                "convention": CONVENTION_NAMES[str(rows[0]["dm_convention"])],
                "has_baseline": any(is_baseline_row(r) for r in rows),
            }
        )
    methods = []
    for name, rows in pd.DataFrame(records).groupby("method_name", sort=True) if records else []:
        info = data.method_info.get(str(name)) or {}
        methods.append(
            {
                "name": name,
                "page": method_page(name),
                "kind": info.get("kind") or rows["kind"].iloc[0],
                "description": info.get("description", ""),
                "n_runs": int(rows["n_seeds"].sum()),
            }
        )
    listed_names = {m["name"] for m in methods}
    for name, rows in data.failed.groupby("method_name", sort=True) if not data.failed.empty else []:
        if name not in listed_names:  # a method whose every run failed
            info = data.method_info.get(str(name)) or {}
            methods.append(
                {
                    "name": name,
                    "page": method_page(name),
                    "kind": info.get("kind") or rows["method_kind"].iloc[0],
                    "description": info.get("description", ""),
                    "n_runs": 0,
                }
            )
    return Page(
        "index.html",
        "index.html",
        {
            "groups": groups,
            "rows": records,
            "methods": methods,
            "listed": listed,
            "filters": filter_options(records, ["task", "backbone", "mitigation", "kind"]),
            "failed": data.failed.to_dict("records") if not data.failed.empty else [],
            "problems": data.loaded.problems,
            "n_runs": len(data.runs),
            "has_downloads": not data.table.empty,
        },
    )


# --------------------------------------------------------------------------- page types


class PageType(Plugin):
    """A kind of page of the site: :meth:`pages` yields its pages (each names its template in
    ``mtlbench/site/templates/``). Page types are plugins like methods and tasks: a subclass
    that sets ``name`` in a module of ``mtlbench/site/`` is found by the registry and built, in
    the order the modules and classes are declared. A page with a ``title`` is listed on the
    index under "More pages"."""

    def pages(self, data: SiteData) -> Iterable[Page]:
        raise NotImplementedError


class GroupPages(PageType):
    name = "group-pages"
    description = "one page per suite × task × backbone: the ranked table, plots and mitigation effects"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return group_pages(data)


class MethodPages(PageType):
    name = "method-pages"
    description = "one page per method: its description, reference, options and every result"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return method_pages(data)
