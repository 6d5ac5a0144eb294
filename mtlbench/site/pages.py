"""The leaderboard's page types: one per suite × task × backbone, one per method, one per run,
and the index. Each is a function of :class:`~mtlbench.site.data.SiteData` yielding
:class:`Page` objects that name their template and context.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd
from markupsafe import Markup, escape

from mtlbench.core.files import read_result
from mtlbench.core.registry import Plugin
from mtlbench.report.aggregate import GROUP, ROW
from mtlbench.site import plots, svgcharts
from mtlbench.site.data import RunDetail, SiteData, delta_m_conventions, group_page, method_page, number
from mtlbench.site.format import finite, fmt, sort_value, thousands

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
    for (suite, task, backbone), rows in data.table.groupby(GROUP, sort=True):
        version = str(rows["task_version"].iloc[0])
        info = data.metric_info(task, version)
        records = row_records(data, rows)
        convention = str(rows["dm_convention"].iloc[0])
        has_base = any(is_baseline_row(r) for r in records)
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


# --------------------------------------------------------------------------- runs


def run_pages(data: SiteData) -> Iterator[Page]:
    groups = {group_page(*k) for k in data.table[GROUP].itertuples(index=False)} if not data.table.empty else set()
    for frame in (data.runs, data.failed):
        for run in frame.to_dict("records"):
            path = Path(run["path"])
            try:
                stat = path.stat()
            except OSError:
                continue
            page = group_page(run["suite"], run["task"], run["backbone"])
            fixed = {
                "run": run,
                "method_page": method_page(run["method_name"]),
                "group_page": page if page in groups else None,
                "source": source_name(path, data.result_dirs),
            }

            def lazy(path: Path = path, fixed: dict[str, Any] = fixed) -> dict[str, Any]:
                return {**run_context(read_result(path)), **fixed}

            # the page shows the result file and the row's aggregates (Δm against the baseline, links)
            key = json.dumps([str(path), stat.st_mtime_ns, stat.st_size, fixed], sort_keys=True, default=str)
            yield Page(run["page"], "run.html", key=hashlib.sha256(key.encode()).hexdigest(), lazy=lazy)


def source_name(path: Path, dirs: Sequence[Path]) -> str:
    """``path`` relative to the result folder it was read from (no local folder names on the site)."""
    for d in dirs:
        if path.is_relative_to(d):
            return (Path(d.name) / path.relative_to(d)).as_posix() if d.is_dir() else d.name
    return path.name


def run_context(r: dict[str, Any]) -> dict[str, Any]:
    """What the run template shows of one result file, with its charts drawn."""
    info = r.get("metric_info") or {}
    metrics = r.get("metrics") or {}
    rows = [
        (
            k,
            (info.get(k) or {}).get("label", k),
            (info.get(k) or {}).get("higher_is_better"),
            (metrics.get("val") or {}).get(k),
            (metrics.get("test") or {}).get(k),
        )
        for k in dict.fromkeys(list(info) + list(metrics.get("test") or {}))
    ]
    conflict = r.get("conflict") if isinstance(r.get("conflict"), dict) else None
    raw_report = r.get("mitigation_report")
    report: dict[str, Any] = raw_report if isinstance(raw_report, dict) else {}
    captions = ((r.get("mitigation_info") or {}).get("report_tables")) or {}
    tables = report_tables(report, captions)
    return {
        "r": r,
        "mitigation": flatten({k: v for k, v in report.items() if k not in tables}),
        "report_tables": list(tables.values()),
        "metric_rows": rows,
        "conflict": conflict,
        "layers": layer_table(_layer_rows(conflict)),
        "charts": run_charts(r, conflict),
        "config_json": json.dumps(r.get("cell"), indent=1, sort_keys=False, default=str),
        "provenance": flatten(r.get("provenance") or {}),
        "cost": flatten(r.get("cost") or {}),
        "selection": flatten(r.get("selection") or {}),
    }


def report_tables(report: dict[str, Any], captions: dict[str, str]) -> dict[str, tuple[str, list[str], list[list[Any]]]]:
    """The lists of records in a mitigation's report, as tables: key -> (caption, columns, rows);
    the caption is the one the mitigation declares (``report_tables``), else the key."""
    out = {}
    for key, value in report.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            out[key] = (str(captions.get(key) or key), columns, [[row.get(c) for c in columns] for row in value])
    return out


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; a list of plain values as one comma-separated value."""
    if isinstance(d, list) and all(not isinstance(v, (dict, list)) for v in d):
        return [(prefix, ", ".join(map(str, d)))]
    if not isinstance(d, dict):
        return [(prefix, d)]
    out = []
    for k, v in d.items():
        out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def layer_table(rows: list[tuple[str, float, float, float]]) -> Markup:
    """The rows of a run page's per-layer table, written here rather than in the template: a
    page has one per shared layer, and this is most of a run page's rendering time."""
    out = []
    for i, (name, params, cos, p) in enumerate(rows, 1):
        bar = round(p * 1.2, 1) if p == p else 0
        out.append(
            f'<tr><td data-v="{sort_value(i)}">{i}</td><td class="l">{escape(name)}</td>'
            f'<td data-v="{sort_value(params)}">{thousands(params)}</td><td data-v="{sort_value(cos)}">{fmt(cos, 3)}</td>'
            f'<td data-v="{sort_value(p)}">{fmt(p, 1)}</td>\n'
            f'<td class="l"><span class="bar" style="width: {bar}px"></span></td></tr>'
        )
    return Markup("\n".join(out))


def _layer_rows(conflict: dict[str, Any] | None) -> list[tuple[str, float, float, float]]:
    """(name, parameters, mean cosine, p%) per shared layer; values that are not numbers are NaN."""
    layers = (conflict or {}).get("layers") or {}
    names = [str(n) for n in layers.get("names") or []]
    columns = [[number(v) for v in layers.get(k) or []] for k in ("params", "mean_cos", "p_pct")]
    columns = [c + [math.nan] * (len(names) - len(c)) for c in columns]
    return list(zip(names, *columns))


def run_charts(r: dict[str, Any], conflict: dict[str, Any] | None) -> list[str]:
    charts = []
    curves = r.get("curves") or {}
    loss: dict[str, Any] = {}
    val: dict[str, Any] = {}
    for model, epochs in curves.items():
        xs = [e.get("epoch") for e in epochs]
        for t in (epochs[0].get("train_loss") or {}) if epochs else {}:
            loss[t if model in ("joint", t) else f"{model}: {t}"] = (xs, [(e.get("train_loss") or {}).get(t) for e in epochs])
        for k in (epochs[0].get("val") or {}) if epochs else {}:
            val[k] = (xs, [(e.get("val") or {}).get(k) for e in epochs])
    if loss:
        charts.append(svgcharts.line_chart(loss, title="training loss per sub-task", xlabel="epoch"))
    if val:
        charts.append(svgcharts.line_chart(val, title="validation metrics", xlabel="epoch"))
    series = (conflict or {}).get("series") or {}
    steps, pair_cos = series.get("step") or [], series.get("pair_cos") or []
    pairs = [" · ".join(map(str, p)) for p in (conflict or {}).get("pairs") or []]
    if steps and pair_cos:
        if len(pairs) <= 6:
            lines: dict[str, Any] = {
                name: (steps, [c[i] if i < len(c) else None for c in pair_cos]) for i, name in enumerate(pairs)
            }
        else:
            lines = {
                "mean over pairs": (steps, [sum(c) / len(c) if c else None for c in pair_cos]),
                "min over pairs": (steps, [min(c) if c else None for c in pair_cos]),
            }
        charts.append(
            svgcharts.line_chart(
                lines, title="cosine between task gradients (cos < 0: conflict)", xlabel="training step", hline=0.0
            )
        )
        if len(pairs) > 1:
            charts.append(
                svgcharts.line_chart(
                    {"p%": (steps, series.get("p_pct") or [])}, title="p% conflict at each sampled step", xlabel="training step"
                )
            )
    return charts


# --------------------------------------------------------------------------- reproduction


def reproduction_pages(data: SiteData) -> Iterator[Page]:
    """``reproduction.html``: each published table (``leaderboard/published/``) beside our runs of
    its suite (:func:`mtlbench.report.published.reproduction_table`), with the table's own Δm check, and
    ``reproduction.csv``. Nothing when no folder of published tables is given or it holds none."""
    from mtlbench.report.published import check_table, load_published, reproduction_table

    tables = load_published(data.published) if data.published is not None else []
    if not tables:
        return
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
            }
        )
    yield Page(
        "reproduction.html", "reproduction.html", {"sections": sections}, title="Reproduction: published tables beside our runs"
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


class RunPages(PageType):
    name = "run-pages"
    description = "one page per run: metrics, curves, conflict, cost, configuration and provenance"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return run_pages(data)


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
