"""What the static site is built from: result files read into tables (aggregated, ranked, with
per-run Δm), the plugins' own descriptions recorded in the results, the few per-run details
the aggregate plots need, and the site's page addresses. Reads result files only (no torch).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from mtlbench.core.parallel import shared
from mtlbench.core.result import OkResult, Result
from mtlbench.report.aggregate import GROUP, ROW, Loaded, load_results, run_delta_m, summarize
from mtlbench.report.ranking import rank_table
from mtlbench.report.tuning import Family, select_tuned
from mtlbench.site.plots import PlotCache

RUN_KEY = GROUP + ROW + ["seed"]


def slug(*parts: Any) -> str:
    """A file name made of ``parts`` joined by ``--``; characters outside [A-Za-z0-9_.+-] become
    ``_`` and then a short hash of the original keeps distinct names distinct."""
    raw = "--".join(str(p) for p in parts)
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", raw).lstrip(".")
    if safe != raw or not safe:
        safe = f"{safe[:80]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def group_page(suite: str, task: str, backbone: str) -> str:
    return slug(suite, task, backbone) + ".html"


def method_page(method_name: Any) -> str:
    return f"methods/{slug(method_name)}.html"


def run_page(suite: str, task: str, backbone: str, method: str, mitigation: str, seed: Any) -> str:
    return f"runs/{slug(suite, task, backbone, method, mitigation, f'seed{seed}')}.html"


@dataclass
class RunDetail:
    """The parts of one result the aggregate plots and method pages need (kept small)."""

    options: dict[str, Any]
    layers: list[str] = field(default_factory=list)
    layer_p: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # mean training loss over sub-tasks, per epoch
    val: dict[str, list[float]] = field(default_factory=dict)  # metric key -> value per epoch


@dataclass
class SiteData:
    """Everything the page functions read. ``table``: one ranked row per suite × task × backbone ×
    method × mitigation (:func:`mtlbench.report.ranking.rank_table`); ``runs``: one row per ok run with
    its Δm and page; ``failed``: failed runs; ``details``: per run path, see :class:`RunDetail`."""

    result_dirs: list[Path]
    loaded: Loaded
    table: pd.DataFrame
    runs: pd.DataFrame
    failed: pd.DataFrame
    task_info: dict[str, dict[str, Any]]
    method_info: dict[str, dict[str, Any]]
    details: dict[str, RunDetail]
    mitigation_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # plugin name -> its declarations
    plots: PlotCache = field(default_factory=lambda: PlotCache(None))  # set by the site build
    published: Path | None = None  # folder of published tables (the reproduction page)
    tuning: list[Family] = field(default_factory=list)  # tuned methods' grid points (the kept row is chosen on validation)
    _runs_by_row: dict[tuple, list[tuple[Any, str, str]]] | None = field(default=None, repr=False)

    def runs_by_row(self) -> dict[tuple, list[tuple[Any, str, str]]]:
        """(suite, task, backbone, method, mitigation) -> [(seed, page, path)] sorted by seed."""
        if self._runs_by_row is None:
            by_row: dict[tuple, list[tuple[Any, str, str]]] = {}
            if not self.runs.empty:
                keys = self.runs[GROUP + ROW].itertuples(index=False, name=None)
                for key, seed, page, path in zip(keys, self.runs["seed"], self.runs["page"], self.runs["path"]):
                    by_row.setdefault(key, []).append((seed, page, path))
                for runs in by_row.values():
                    runs.sort(key=lambda run: run[0])
            self._runs_by_row = by_row
        return self._runs_by_row

    def metric_info(self, task: str, version: str) -> dict:
        return self.loaded.metric_info[(task, str(version))]

    def main_metrics(self, task: str, version: str) -> dict[str, str]:
        """Sub-task -> its main metric key: as the task declares, else its first metric."""
        declared = (self.task_info.get(task) or {}).get("main_metrics") or {}
        info = self.metric_info(task, version)
        out: dict[str, str] = {}
        for key, m in info.items():
            out.setdefault(m.task, key)
        out.update({t: k for t, k in declared.items() if k in info})
        return out


def load_site_data(result_dirs: Iterable[Path], cache: Path | None = None, workers: int = 1) -> SiteData:
    """The site's data from the result files; ``cache`` (a file) keeps what was read from each
    unchanged file for the next build; ``workers`` processes read the others (see
    :func:`mtlbench.report.aggregate.load_results`)."""
    dirs = [Path(d) for d in result_dirs]
    task_info: dict[str, dict[str, Any]] = {}
    method_info: dict[str, dict[str, Any]] = {}
    mitigation_info: dict[str, dict[str, Any]] = {}
    details: dict[str, RunDetail] = {}

    def revisit(path: Path, payload: tuple[str, Any, str, Any, str, Any, RunDetail]) -> None:
        task, t_info, method, m_info, mitigation, g_info, detail = payload
        for known, key, info in ((task_info, task, t_info), (method_info, method, m_info), (mitigation_info, mitigation, g_info)):
            if info is not None and key not in known:
                known[key] = info
        details[str(path)] = detail

    def visit(path: Path, result: Result) -> tuple[str, Any, str, Any, str, Any, RunDetail]:
        def declared(kind: str, name: str, info: Any) -> Any:
            return shared((kind, name), info.model_dump(mode="json") if info is not None else None)

        return (
            result.task,
            declared("task", result.task, result.task_info),
            result.method_name,
            declared("method", result.method_name, result.method_info),
            result.mitigation_name,
            declared("mitigation", result.mitigation_name, result.mitigation_info),
            run_detail(result),
        )

    loaded = load_results(dirs, visit, cache=cache, revisit=revisit, workers=workers)
    runs = run_delta_m(loaded)
    failed = loaded.failed.copy()
    for frame in (runs, failed):
        frame["page"] = [run_page(*k) for k in frame[RUN_KEY].itertuples(index=False)] if not frame.empty else []
    conventions = delta_m_conventions(task_info)
    table, tuning = select_tuned(summarize(loaded, runs), conventions)
    table = rank_table(table, runs, conventions)
    return SiteData(dirs, loaded, table, runs, failed, task_info, method_info, details, mitigation_info, tuning=tuning)


def delta_m_conventions(task_info: dict[str, dict[str, Any]]) -> dict[str, str]:
    """task -> the Δm convention it declares (``flat`` unless it says ``task``)."""
    return {t: str(i.get("delta_m_convention", "flat")) for t, i in task_info.items()}


def run_detail(result: Result) -> RunDetail:
    detail = RunDetail(options=dict(result.cell.method_options))
    if not isinstance(result, OkResult):
        return detail
    layers = result.conflict.layers if result.conflict is not None else None
    if layers is not None:
        detail.layers = list(layers.names)
        detail.layer_p = [number(v) for v in layers.p_pct]
    models = list(result.curves.values())
    if models:
        n = min(len(m) for m in models)
        detail.epochs = [e.epoch for e in models[0][:n]]
        for i in range(n):
            losses = [number(v) for m in models for v in m[i].train_loss.values()]
            detail.loss.append(sum(losses) / len(losses) if losses else math.nan)
            for m in models:
                for k, v in m[i].val.items():
                    detail.val.setdefault(k, []).append(number(v))
    return detail


def number(v: Any) -> float:
    """``v`` as a float, NaN when it is not a number (result files are data from outside)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
