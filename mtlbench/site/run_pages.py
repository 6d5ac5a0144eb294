"""One page per run: metrics, curves, conflict, the mitigation's report (its tables as the
mitigation declares them), cost, configuration and provenance.

A site holds a page per run (tens of thousands on a public leaderboard), so the build writes
each page from the aggregated row and the result file's text, never parsing the file again: the
header, metrics and Δm are rendered here; the page's script (templates/table.js) draws the rest
from the result embedded in the page: curves, conflict statistics and tables, the per-layer
series as a heatmap (decoded from its packed arrays), the mitigation's report, cost,
configuration and provenance. Pages work opened from disk; nothing is fetched."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from markupsafe import Markup

from mtlbench.core.errors import ResultError
from mtlbench.report.aggregate import GROUP
from mtlbench.site.data import SiteData, group_page, method_page
from mtlbench.site.pages import Page, PageType

# what run.html shows of a run's row
RUN_FIELDS = ("suite", "task", "task_version", "backbone", "method", "method_name", "mitigation", "seed", "config_hash",
              "dm_flat", "dm_task", "reason")  # fmt: skip


def run_pages(data: SiteData) -> Iterator[Page]:
    groups = {group_page(*k) for k in data.table[GROUP].itertuples(index=False)} if not data.table.empty else set()
    roots = [(str(d) + os.sep, d.name + "/") for d in data.result_dirs if d.is_dir()]
    group_link, method_link = functools.cache(group_page), functools.cache(method_page)  # one per row, many runs each
    for status, frame in (("ok", data.runs), ("failed", data.failed)):
        if frame.empty:
            continue
        fields = [f for f in RUN_FIELDS if f in frame]  # failed runs have no Δm and no metrics
        metric_columns = [c for c in frame.columns if c.startswith(("val:", "test:"))]
        for values in frame[[*fields, *metric_columns, "path", "page"]].itertuples(index=False, name=None):
            run = dict(zip(fields, values))
            metrics = dict(zip(metric_columns, values[len(fields) : -2]))
            path, page_path = values[-2], values[-1]
            try:
                stat = os.stat(path)
            except OSError:
                continue
            page = group_link(run["suite"], run["task"], run["backbone"])
            fixed = {
                "run": run,
                "status": status,
                "reason": reason if isinstance(reason := run.pop("reason", None), str) and reason else None,
                "metric_rows": metric_rows(data, run, metrics) if status == "ok" else [],
                "method_page": method_link(run["method_name"]),
                "group_page": page if page in groups else None,
                "source": source_name(path, roots),
            }

            def lazy(path: str = path, fixed: dict[str, Any] = fixed) -> dict[str, Any]:
                return {"result": embedded_result(path), **fixed}

            # the page shows the result file and the row's aggregates (Δm against the baseline, links)
            key = repr((path, stat.st_mtime_ns, stat.st_size, list(fixed.values())))  # fixed holds the run's row
            yield Page(page_path, "run.html", key=hashlib.sha256(key.encode()).hexdigest(), lazy=lazy)


def metric_rows(data: SiteData, run: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(label, higher is better, validation value, test value) per metric of an ok run, from the
    aggregated row (the values its result file holds) and its task's metric declarations."""
    info = data.metric_info(run["task"], str(run["task_version"]))
    return [(m.label or k, m.higher_is_better, metrics.get(f"val:{k}"), metrics.get(f"test:{k}")) for k, m in info.items()]


def embedded_result(path: str) -> Markup:
    """A result file's text for the page's ``<script type="application/json">`` block, as it is
    (not parsed here: the page's script draws it). ``<`` can only occur inside JSON strings,
    where ``\\u003c`` reads back the same; so nothing in the file can close the block."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: cannot be read ({e})") from None
    return Markup(text.strip().replace("<", "\\u003c"))


def source_name(path: str, roots: Sequence[tuple[str, str]]) -> str:
    """``path`` relative to the result folder it was read from, under that folder's name (no
    local folder names on the site); ``roots``: (folder + separator, its name + "/") per folder."""
    for prefix, name in roots:
        if path.startswith(prefix):
            return name + path[len(prefix) :].replace(os.sep, "/")
    return os.path.basename(path)


class RunPages(PageType):
    name = "run-pages"
    description = "one page per run: metrics, curves, conflict, cost, configuration and provenance"

    def pages(self, data: SiteData) -> Iterable[Page]:
        return run_pages(data)
