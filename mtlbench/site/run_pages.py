"""One page per run: metrics, curves, conflict, the mitigation's report (its tables as the
mitigation declares them), cost, configuration and provenance."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from markupsafe import Markup, escape

from mtlbench.core.files import read_result
from mtlbench.report.aggregate import GROUP
from mtlbench.site.data import SiteData, group_page, method_page, number
from mtlbench.site.format import fmt, sort_value, thousands
from mtlbench.site.pages import Page, PageType


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
        "layer_series": layer_series_data(conflict),
        "charts": page_json(run_charts(r, conflict)),
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


def layer_series_data(conflict: dict[str, Any] | None) -> Markup | None:
    """The run's per-layer conflict series for the page's script (JSON; the packed arrays are
    passed on as they are, decoded and drawn in the browser), or None when the run has none."""
    c = conflict or {}
    series = c.get("layer_series")
    if not isinstance(series, dict) or not all(isinstance(series.get(k), dict) for k in ("mean_cos", "conflicting_pairs")):
        return None
    data = {
        "steps": (c.get("series") or {}).get("step") or [],
        "layers": (c.get("layers") or {}).get("names") or [],
        "pairs": len(c.get("pairs") or []) or 1,
        "mean_cos": series["mean_cos"],
        "conflicting_pairs": series["conflicting_pairs"],
    }
    return page_json(data)


def _layer_rows(conflict: dict[str, Any] | None) -> list[tuple[str, float, float, float]]:
    """(name, parameters, mean cosine, p%) per shared layer; values that are not numbers are NaN."""
    layers = (conflict or {}).get("layers") or {}
    names = [str(n) for n in layers.get("names") or []]
    columns = [[number(v) for v in layers.get(k) or []] for k in ("params", "mean_cos", "p_pct")]
    columns = [c + [math.nan] * (len(names) - len(c)) for c in columns]
    return list(zip(names, *columns))


def run_charts(r: dict[str, Any], conflict: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The run's line charts as data (title, x label, optional zero line, named lines of x and y
    values), drawn in the browser by the page's script: a site has one page per run, and drawing
    them here was a fifth of a run page's build time."""
    charts: list[dict[str, Any]] = []

    def chart(lines: dict[str, tuple[list[Any], list[Any]]], title: str, xlabel: str, hline: float | None = None) -> None:
        charts.append({"title": title, "xlabel": xlabel, "hline": hline,
                       "lines": [[name, _numbers(xs), _numbers(ys)] for name, (xs, ys) in lines.items()]})  # fmt: skip

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
        chart(loss, "training loss per sub-task", "epoch")
    if val:
        chart(val, "validation metrics", "epoch")
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
        chart(lines, "cosine between task gradients (cos < 0: conflict)", "training step", hline=0.0)
        if len(pairs) > 1:
            chart({"p%": (steps, series.get("p_pct") or [])}, "p% conflict at each sampled step", "training step")
    return charts


def _numbers(values: list[Any]) -> list[float | None]:
    """Plain numbers for the page's data (anything else, NaN and Inf as null: the chart skips them)."""
    return [v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None for v in values]


def page_json(data: Any) -> Markup:
    """``data`` as JSON for a ``<script type="application/json">`` block (``<`` escaped: inert there)."""
    return Markup(json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c"))


class RunPages(PageType):
    name = "run-pages"
    description = "one page per run: metrics, curves, conflict, cost, configuration and provenance"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return run_pages(data)
