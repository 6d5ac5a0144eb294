"""The leaderboard's aggregate plots, drawn with matplotlib and inlined as SVG.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global state, no
display; SVG output needs no GUI backend). Text stays text (``svg.fonttype = none``), every
figure gets its own id salt so several plots share one page without id clashes, and
matplotlib's own element ids are dropped. Labels from result files are escaped by the SVG
writer; ``$`` is escaped so a label never switches on mathtext.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

KIND_COLORS = {"weighting": "#2457c5", "gradient": "#d9730d", "single_task": "#5d6475"}
FIXED_COLOR = "#137333"
MARKERS = ("o", "^", "s", "D", "v", "P", "X")
MAX_LABELS = 16  # point labels drawn per plot (a busy plot labels its best points only)
_GID = re.compile(r' id="[A-Za-z0-9.]+_\d+"')
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_XMLNS = re.compile(r' xmlns(:xlink)?="[^"]*"')


@dataclass(frozen=True)
class Point:
    """One leaderboard row as a point: its label, method kind, mitigation and (x, y) ± std."""

    label: str
    kind: str
    mitigation: str
    x: float
    y: float
    x_std: float = math.nan
    y_std: float = math.nan


PlotJob = tuple[Callable[..., str], tuple, dict]  # (plot function, args, kwargs)


def draw_job(job: PlotJob) -> str:
    fn, args, kwargs = job
    return fn(*args, **kwargs)


class PlotCache:
    """The SVG of every plot drawn, kept in a folder by a hash of the plot function, its inputs,
    this module's source and the matplotlib version: a rebuild redraws only plots whose data
    changed. ``prune()`` deletes the entries the current build did not use. No folder: no cache.
    ``workers`` > 1 draws the missing plots of one :meth:`draw_many` call in that many processes
    when there are at least ``min_parallel`` of them (starting a worker costs about a second,
    drawing a plot about a quarter of one)."""

    def __init__(self, folder: Path | None, workers: int = 1, min_parallel: int = 32) -> None:
        self.folder = folder
        self.workers = max(1, workers)
        self.min_parallel = min_parallel
        self.used: set[str] = set()
        self.hits = self.misses = 0
        self._code = hashlib.sha256(Path(__file__).read_bytes() + matplotlib.__version__.encode()).hexdigest()

    def draw(self, fn: Callable[..., str], *args: Any, **kwargs: Any) -> str:
        return self.draw_many([(fn, args, kwargs)])[0]

    def draw_many(self, jobs: Sequence[PlotJob]) -> list[str]:
        paths = [self._path(job) for job in jobs]
        out = [self._read(p) for p in paths]
        missing = [i for i, svg in enumerate(out) if svg is None]
        todo = [jobs[i] for i in missing]
        if self.workers > 1 and len(todo) >= max(2, self.min_parallel):
            # spawn: workers import only mtlbench.site.plots and matplotlib, never the caller's state
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=context) as pool:
                drawn = list(pool.map(draw_job, todo))
        else:
            drawn = [draw_job(job) for job in todo]
        self.hits += len(jobs) - len(todo)
        self.misses += len(todo)
        for i, svg in zip(missing, drawn):
            out[i] = svg
            self._write(paths[i], svg)
        return out  # type: ignore[return-value]

    def _path(self, job: PlotJob) -> Path | None:
        if self.folder is None:
            return None
        fn, args, kwargs = job
        key = hashlib.sha256(repr((self._code, fn.__name__, args, sorted(kwargs.items()))).encode()).hexdigest()[:32]
        self.used.add(f"{key}.svg")
        return self.folder / f"{key}.svg"

    @staticmethod
    def _read(path: Path | None) -> str | None:
        try:
            return path.read_text(encoding="utf-8") if path is not None else None
        except OSError:
            return None

    def _write(self, path: Path | None, svg: str) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(svg, encoding="utf-8")
        os.replace(tmp, path)

    def prune(self) -> None:
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.svg"):
                if path.name not in self.used:
                    path.unlink(missing_ok=True)


def text(s: str) -> str:
    """A label for matplotlib: ``$`` escaped (no mathtext), no leading ``_`` (legend-hidden)."""
    s = str(s).replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def to_svg(fig: Figure, salt: str) -> str:
    """The figure as an ``<svg>`` element for inlining into HTML."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.08, metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = _METADATA.sub("", svg[svg.index("<svg") :])
    svg = _XMLNS.sub("", _GID.sub("", svg))  # namespaces are implied for SVG inside HTML
    return svg.replace("<svg ", '<svg class="plot" ', 1)


def _new(width: float, height: float) -> Figure:
    # no layout engine: the tight bounding box at save time is ~4x cheaper than "constrained"
    return Figure(figsize=(width, height), dpi=100)


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _markers(points: Sequence[Point]) -> dict[str, str]:
    mitigations = sorted({p.mitigation for p in points}, key=lambda m: (m != "none", m))
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(mitigations)}


def _legend(ax, points: Sequence[Point], markers: Mapping[str, str], extra: Sequence = ()) -> None:
    handles = list(extra)
    for kind in sorted({p.kind for p in points}):
        handles.append(ax.scatter([], [], color=KIND_COLORS.get(kind, "#7b3fb5"), marker="o", label=text(kind)))
    if len(markers) > 1:
        for m, marker in markers.items():
            handles.append(ax.scatter([], [], color="#999", marker=marker, label=text(f"mitigation {m}")))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)


def dominated(points: Sequence[Point], x_higher: bool, y_higher: bool) -> list[bool]:
    """For each point, whether another point is at least as good on both axes and better on one."""
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    out = []
    for p in points:
        out.append(any(sx * q.x >= sx * p.x and sy * q.y >= sy * p.y and (q.x, q.y) != (p.x, p.y) for q in points))
    return out


def _draw_points(
    ax, points: Sequence[Point], markers: Mapping[str, str], filled: Sequence[bool], labelled: Sequence[bool]
) -> None:
    """All error bars in one artist, one scatter per (kind, mitigation, filled), and the labels
    asked for: few artists, so a plot of many methods still draws fast."""
    ax.errorbar(
        [p.x for p in points],
        [p.y for p in points],
        fmt="none",
        ecolor="#9aa0ad",
        alpha=0.6,
        lw=0.8,
        xerr=[p.x_std if _finite(p.x_std) else 0.0 for p in points],
        yerr=[p.y_std if _finite(p.y_std) else 0.0 for p in points],
    )
    groups: dict[tuple[str, str, bool], list[Point]] = {}
    for p, f in zip(points, filled):
        groups.setdefault((p.kind, p.mitigation, f), []).append(p)
    for (kind, mitigation, f), pts in groups.items():
        color = KIND_COLORS.get(kind, "#7b3fb5")
        ax.scatter(
            [p.x for p in pts],
            [p.y for p in pts],
            marker=markers[mitigation],
            s=40,
            edgecolors=color,
            facecolors=color if f else "white",
            zorder=3,
        )
    for p, show in zip(points, labelled):
        if show:
            ax.annotate(text(p.label), (p.x, p.y), fontsize=7, xytext=(4, 4), textcoords="offset points")


def pareto_plot(
    points: Sequence[Point],
    fixed: Sequence[Point],
    stl: Point | None,
    xlabel: str,
    ylabel: str,
    x_higher: bool,
    y_higher: bool,
    salt: str,
) -> str:
    """Two-task trade-off: each method's mean test metric on task A vs task B. Non-dominated
    methods are filled, dominated ones hollow (with more than MAX_LABELS points only the
    non-dominated ones are labelled); the fixed-weight sweep is drawn as the reference front;
    the single-task models are the star."""
    fig = _new(6.2, 4.6)
    ax = fig.add_subplot()
    markers = _markers(points)
    extra: list[Any] = []
    if fixed:
        front = sorted(fixed, key=lambda p: p.x)
        (line,) = ax.plot(
            [p.x for p in front], [p.y for p in front], "--", color=FIXED_COLOR, marker=".", label="fixed-weight sweep"
        )
        extra.append(line)
        for p in front[:: max(1, len(front) // MAX_LABELS)]:
            ax.annotate(text(p.label), (p.x, p.y), fontsize=6, color=FIXED_COLOR, xytext=(3, -8), textcoords="offset points")
    undominated = [not d for d in dominated(points, x_higher, y_higher)]
    _draw_points(ax, points, markers, undominated, undominated if len(points) > MAX_LABELS else [True] * len(points))
    if stl is not None:
        extra.append(ax.scatter([stl.x], [stl.y], marker="*", s=140, color="#1d2330", zorder=4, label="single-task models"))
    ax.set_xlabel(text(xlabel) + (" ↑" if x_higher else " ↓"))
    ax.set_ylabel(text(ylabel) + (" ↑" if y_higher else " ↓"))
    ax.grid(alpha=0.3)
    _legend(ax, points, markers, extra)
    return to_svg(fig, salt)


def dm_conflict_plot(points: Sequence[Point], convention: str, salt: str) -> str:
    """Δm (y, lower is better) against conflict incidence p% (x), mean ± std over seeds; with
    more than MAX_LABELS points only the MAX_LABELS best by Δm are labelled."""
    fig = _new(6.2, 4.2)
    ax = fig.add_subplot()
    markers = _markers(points)
    best = set(sorted(range(len(points)), key=lambda i: points[i].y)[:MAX_LABELS])
    _draw_points(ax, points, markers, [True] * len(points), [i in best for i in range(len(points))])
    ax.axhline(0.0, color="#5d6475", lw=0.8, ls=":")
    ax.set_xlabel("p% conflict (share of task pairs with cos < 0)")
    ax.set_ylabel(f"Δm % ({convention}) ↓")
    ax.grid(alpha=0.3)
    _legend(ax, points, markers)
    return to_svg(fig, salt)


def layer_heatmap(rows: Sequence[str], layers: Sequence[str], values: Sequence[Sequence[float]], salt: str) -> str:
    """Per-layer conflict rate p% (colour) for each method (row) over the shared layers (columns)."""
    width = min(16.0, max(7.0, 2.5 + 0.2 * len(layers)))
    fig = _new(width, 2.0 + 0.3 * len(rows) + 0.06 * max((len(n) for n in layers), default=0))
    ax = fig.add_subplot()
    matrix = [[v if _finite(v) else math.nan for v in row] for row in values]
    image = ax.imshow(matrix, aspect="auto", cmap="Reds", vmin=0.0, vmax=100.0, interpolation="nearest")
    ax.set_yticks(range(len(rows)), [text(r) for r in rows], fontsize=7)
    ax.set_xticks(range(len(layers)), [text(n) for n in layers], fontsize=6, rotation=90)
    fig.colorbar(image, ax=ax, label="p% conflict", shrink=0.9, pad=0.01)
    return to_svg(fig, salt)


def curves_plot(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], xlabel: str, salt: str) -> str:
    """Side-by-side panels (title -> {line label -> (x, y)}), e.g. training loss and validation
    metrics per epoch, one line per method (mean over seeds)."""
    n = max(len(panels), 1)
    fig = _new(min(4.0 * n, 16.0), 3.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels.items()):
        for i, (label, (xs, ys)) in enumerate(lines.items()):
            ax.plot(xs, ys, marker=".", lw=1.3, label=text(label), color=matplotlib.colormaps["tab20"](i % 20))
        ax.set_title(text(title), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.99, 0.95), fontsize=7)
    return to_svg(fig, salt)
