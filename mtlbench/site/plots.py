"""The leaderboard's aggregate plots, written directly as inline SVG.

A site of thousands of runs has about one group page per hundred runs, each with up to four
plots: the two-task trade-off (Pareto front), Δm against conflict incidence, the per-layer
conflict heatmap and the training curves. Drawn here they cost about a millisecond each
(matplotlib took ~100 ms a figure, most of a cold site build). Text stays text, every string
from a result file is escaped, and no element carries an id, so any number of plots share a
page. Styles live in the site's stylesheet (``svg.plot`` in base.html).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mtlbench.site.format import finite
from mtlbench.site.svgcharts import nice_ticks, tick_label

KIND_COLORS = {"weighting": "#2457c5", "gradient": "#d9730d", "single_task": "#5d6475"}
OTHER_KIND_COLOR = "#7b3fb5"
FIXED_COLOR = "#137333"
MARKERS = ("o", "^", "s", "D", "v", "P", "X")
MAX_LABELS = 16  # point labels drawn per plot (a busy plot labels its best points only)
# for up to 20 training curves on one panel: ten strong colours, then their light versions
LINE_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
# ColorBrewer "Reds" (9 classes), low to high, for the heatmap
REDS = ("#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#a50f15", "#67000d")
MISSING = "#e9ebf0"


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


class PlotCache:
    """The SVG of every plot drawn, kept in a folder by a hash of the plot function, its inputs
    and this module's source: a rebuild redraws only plots whose data changed. ``prune()``
    deletes the entries the current build did not use. No folder: no cache."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.used: set[str] = set()
        self.hits = self.misses = 0
        self._code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

    def draw(self, fn: Callable[..., str], *args: Any, **kwargs: Any) -> str:
        return self.draw_many([(fn, args, kwargs)])[0]

    def draw_many(self, jobs: Sequence[PlotJob]) -> list[str]:
        out = []
        for fn, args, kwargs in jobs:
            path = self._path(fn, args, kwargs)
            svg = self._read(path)
            if svg is None:
                svg = fn(*args, **kwargs)
                self._write(path, svg)
                self.misses += 1
            else:
                self.hits += 1
            out.append(svg)
        return out

    def _path(self, fn: Callable[..., str], args: tuple, kwargs: dict) -> Path | None:
        if self.folder is None:
            return None
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


# --------------------------------------------------------------------------- drawing primitives


def _svg(width: float, height: float, label: str, body: Sequence[str]) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'role="img" aria-label="{escape(label)}">{"".join(body)}</svg>'
    )


class Frame:
    """A rectangular plot area at (x0, y0) of size w × h, mapping data to pixels over round ticks
    that cover ``xs`` and ``ys``."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], x0: float, y0: float, w: float, h: float) -> None:
        self.xt = nice_ticks(min(xs), max(xs)) if xs else [0.0, 1.0]
        self.yt = nice_ticks(min(ys), max(ys)) if ys else [0.0, 1.0]
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def sx(self, x: float) -> float:
        return self.x0 + self.w * (x - self.xt[0]) / (self.xt[-1] - self.xt[0])

    def sy(self, y: float) -> float:
        return self.y0 + self.h * (1 - (y - self.yt[0]) / (self.yt[-1] - self.yt[0]))

    def axes(self, xlabel: str, ylabel: str, integer_x: bool = False) -> list[str]:
        """Background, grid lines, tick labels and axis labels."""
        x0, y0, w, h = self.x0, self.y0, self.w, self.h
        out = [f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" class="f"/>']
        grid = []
        for t in self.yt:
            y = self.sy(t)
            grid.append(f"M{x0:.1f} {y:.1f}H{x0 + w:.1f}")
            out.append(f'<text x="{x0 - 5:.1f}" y="{y + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
        for t in self.xt:
            if integer_x and t != round(t):
                continue
            x = self.sx(t)
            grid.append(f"M{x:.1f} {y0:.1f}V{y0 + h:.1f}")
            out.append(f'<text x="{x:.1f}" y="{y0 + h + 15:.1f}" text-anchor="middle">{tick_label(t)}</text>')
        out.insert(1, f'<path d="{"".join(grid)}" class="g"/>')
        out.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 33:.1f}" text-anchor="middle">{escape(xlabel)}</text>')
        if ylabel:
            out.append(
                f'<text transform="translate({x0 - 44:.1f} {y0 + h / 2:.1f}) rotate(-90)" '
                f'text-anchor="middle">{escape(ylabel)}</text>'
            )
        return out


def marker(shape: str, x: float, y: float, r: float, stroke: str, fill: str) -> str:
    """One point marker centred at (x, y) with radius about ``r``; shapes as in :data:`MARKERS`."""
    style = f'stroke="{stroke}" fill="{fill}" stroke-width="1.2"'
    if shape == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {style}/>'
    pts = {
        "^": [(0, -1.2), (1.1, 0.8), (-1.1, 0.8)],
        "v": [(0, 1.2), (1.1, -0.8), (-1.1, -0.8)],
        "s": [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)],
        "D": [(0, -1.2), (1.1, 0), (0, 1.2), (-1.1, 0)],
        "P": [(-0.35, -1), (0.35, -1), (0.35, -0.35), (1, -0.35), (1, 0.35), (0.35, 0.35), (0.35, 1), (-0.35, 1),
              (-0.35, 0.35), (-1, 0.35), (-1, -0.35), (-0.35, -0.35)],
        "X": [(-0.75, -1), (0, -0.25), (0.75, -1), (1, -0.75), (0.25, 0), (1, 0.75), (0.75, 1), (0, 0.25), (-0.75, 1),
              (-1, 0.75), (-0.25, 0), (-1, -0.75)],
        "*": [(math.cos(math.pi / 2 + k * math.pi / 5) * (1.5 if k % 2 == 0 else 0.6),
               -math.sin(math.pi / 2 + k * math.pi / 5) * (1.5 if k % 2 == 0 else 0.6)) for k in range(10)],
    }[shape]  # fmt: skip
    coords = " ".join(f"{x + r * dx:.1f},{y + r * dy:.1f}" for dx, dy in pts)
    return f'<polygon points="{coords}" {style}/>'


def legend(x: float, y: float, entries: Sequence[tuple[str, str]]) -> list[str]:
    """A legend of (symbol SVG at the origin, label) rows from (x, y) downwards."""
    out = []
    for i, (symbol, label) in enumerate(entries):
        yy = y + 17 * i
        out.append(f'<g transform="translate({x:.1f} {yy:.1f})">{symbol}</g>')
        out.append(f'<text x="{x + 12:.1f}" y="{yy + 4:.1f}">{escape(label)}</text>')
    return out


def _markers(points: Sequence[Point]) -> dict[str, str]:
    mitigations = sorted({p.mitigation for p in points}, key=lambda m: (m != "none", m))
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(mitigations)}


def _kind_color(kind: str) -> str:
    return KIND_COLORS.get(kind, OTHER_KIND_COLOR)


def _point_legend(points: Sequence[Point], markers: Mapping[str, str]) -> list[tuple[str, str]]:
    entries = [(marker("o", 0, 0, 4, _kind_color(k), _kind_color(k)), k) for k in sorted({p.kind for p in points})]
    if len(markers) > 1:
        entries += [(marker(shape, 0, 0, 4, "#999", "#999"), f"mitigation {m}") for m, shape in markers.items()]
    return entries


def dominated(points: Sequence[Point], x_higher: bool, y_higher: bool) -> list[bool]:
    """For each point, whether another point is at least as good on both axes and better on one."""
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    out = []
    for p in points:
        out.append(any(sx * q.x >= sx * p.x and sy * q.y >= sy * p.y and (q.x, q.y) != (p.x, p.y) for q in points))
    return out


def _extent(points: Sequence[Point]) -> tuple[list[float], list[float]]:
    """Every x and y a plot must show: the points and the ends of their error bars."""
    xs, ys = [], []
    for p in points:
        dx = p.x_std if finite(p.x_std) else 0.0
        dy = p.y_std if finite(p.y_std) else 0.0
        xs += [p.x - dx, p.x + dx]
        ys += [p.y - dy, p.y + dy]
    return xs, ys


def _draw_points(
    f: Frame, points: Sequence[Point], markers: Mapping[str, str], filled: Sequence[bool], labelled: Sequence[bool]
) -> list[str]:
    """All error bars in one path, then the markers, then the labels asked for."""
    bars = []
    for p in points:
        x, y = f.sx(p.x), f.sy(p.y)
        if finite(p.x_std) and p.x_std > 0:
            bars.append(f"M{f.sx(p.x - p.x_std):.1f} {y:.1f}H{f.sx(p.x + p.x_std):.1f}")
        if finite(p.y_std) and p.y_std > 0:
            bars.append(f"M{x:.1f} {f.sy(p.y - p.y_std):.1f}V{f.sy(p.y + p.y_std):.1f}")
    out = [f'<path d="{"".join(bars)}" class="e"/>'] if bars else []
    for p, full in zip(points, filled):
        color = _kind_color(p.kind)
        out.append(marker(markers[p.mitigation], f.sx(p.x), f.sy(p.y), 4.5, color, color if full else "#fff"))
    for p, show in zip(points, labelled):
        if show:
            out.append(f'<text x="{f.sx(p.x) + 6:.1f}" y="{f.sy(p.y) - 6:.1f}" class="l">{escape(p.label)}</text>')
    return out


# --------------------------------------------------------------------------- the plots


def pareto_plot(
    points: Sequence[Point],
    fixed: Sequence[Point],
    stl: Point | None,
    xlabel: str,
    ylabel: str,
    x_higher: bool,
    y_higher: bool,
) -> str:
    """Two-task trade-off: each method's mean test metric on task A vs task B. Non-dominated
    methods are filled, dominated ones hollow (with more than MAX_LABELS points only the
    non-dominated ones are labelled); the fixed-weight sweep is drawn as the reference front;
    the single-task models are the star."""
    xs, ys = _extent([*points, *fixed, *([stl] if stl else [])])
    f = Frame(xs, ys, 64, 14, 440, 340)
    body = f.axes(xlabel + (" ↑" if x_higher else " ↓"), ylabel + (" ↑" if y_higher else " ↓"))
    markers = _markers(points)
    entries = []
    if fixed:
        front = sorted(fixed, key=lambda p: p.x)
        coords = " ".join(f"{f.sx(p.x):.1f},{f.sy(p.y):.1f}" for p in front)
        body.append(f'<polyline points="{coords}" fill="none" stroke="{FIXED_COLOR}" stroke-width="1.4" stroke-dasharray="5 3"/>')
        body += [f'<circle cx="{f.sx(p.x):.1f}" cy="{f.sy(p.y):.1f}" r="2" fill="{FIXED_COLOR}"/>' for p in front]
        for p in front[:: max(1, len(front) // MAX_LABELS)]:
            body.append(
                f'<text x="{f.sx(p.x) + 4:.1f}" y="{f.sy(p.y) + 11:.1f}" class="l" fill="{FIXED_COLOR}">{escape(p.label)}</text>'
            )
        line = f'<path d="M-6 0H6" stroke="{FIXED_COLOR}" stroke-width="1.4" stroke-dasharray="4 2"/>'
        entries.append((line, "fixed-weight sweep"))
    undominated = [not d for d in dominated(points, x_higher, y_higher)]
    body += _draw_points(f, points, markers, undominated, undominated if len(points) > MAX_LABELS else [True] * len(points))
    if stl is not None:
        body.append(marker("*", f.sx(stl.x), f.sy(stl.y), 6, "#1d2330", "#1d2330"))
        entries.append((marker("*", 0, 0, 4, "#1d2330", "#1d2330"), "single-task models"))
    entries += _point_legend(points, markers)
    body += legend(524, 24, entries)
    return _svg(680, 400, f"{xlabel} against {ylabel}", body)


def dm_conflict_plot(points: Sequence[Point], convention: str) -> str:
    """Δm (y, lower is better) against conflict incidence p% (x), mean ± std over seeds; with
    more than MAX_LABELS points only the MAX_LABELS best by Δm are labelled."""
    xs, ys = _extent(points)
    f = Frame(xs, [*ys, 0.0], 64, 14, 440, 320)
    body = f.axes("p% conflict (share of task pairs with cos < 0)", f"Δm % ({convention}) ↓")
    body.append(f'<path d="M{f.x0:.1f} {f.sy(0.0):.1f}H{f.x0 + f.w:.1f}" class="z"/>')
    markers = _markers(points)
    best = set(sorted(range(len(points)), key=lambda i: points[i].y)[:MAX_LABELS])
    body += _draw_points(f, points, markers, [True] * len(points), [i in best for i in range(len(points))])
    body += legend(524, 24, _point_legend(points, markers))
    return _svg(680, 380, "Δm against p% conflict", body)


def reds(v: float) -> str:
    """The heatmap colour of a p% in [0, 100]."""
    if not finite(v):
        return MISSING
    return REDS[min(len(REDS) - 1, max(0, int(v / 100 * len(REDS))))]


def layer_heatmap(rows: Sequence[str], layers: Sequence[str], values: Sequence[Sequence[float]]) -> str:
    """Per-layer conflict rate p% (colour) for each method (row) over the shared layers
    (columns); each cell's value is its tooltip."""
    cw, ch = max(9.0, min(22.0, 900 / max(len(layers), 1))), 16.0
    left = 12 + 6.6 * max((len(r) for r in rows), default=4)
    top = 8.0
    names_h = 6.2 * max((len(n) for n in layers), default=4) + 12
    w, h = cw * len(layers), ch * len(rows)
    body = []
    for i, (row, vals) in enumerate(zip(rows, values)):
        y = top + ch * i
        body.append(f'<text x="{left - 5:.1f}" y="{y + ch - 4:.1f}" text-anchor="end">{escape(row)}</text>')
        for j, v in enumerate(vals):
            tip = f"{v:.1f}" if finite(v) else "no data"
            body.append(
                f'<rect x="{left + cw * j:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" fill="{reds(v)}">'
                f"<title>{escape(row)} · {escape(layers[j])}: {tip}</title></rect>"
            )
    for j, name in enumerate(layers):
        x, y = left + cw * j + cw / 2 + 3, top + h + 5
        body.append(f'<text transform="translate({x:.1f} {y:.1f}) rotate(-90)" text-anchor="end" class="s">{escape(name)}</text>')
    bx = left + w + 16
    for k, color in enumerate(REDS):
        y, step = top + h - (k + 1) * h / len(REDS), h / len(REDS)
        body.append(f'<rect x="{bx:.1f}" y="{y:.1f}" width="12" height="{step:.2f}" fill="{color}"/>')
    body.append(f'<text x="{bx + 16:.1f}" y="{top + 8:.1f}">100</text><text x="{bx + 16:.1f}" y="{top + h:.1f}">0</text>')
    body.append(f'<text x="{bx + 16:.1f}" y="{top + h / 2 + 4:.1f}">p% conflict</text>')
    return _svg(bx + 100, top + h + names_h, "per-layer conflict rate", body)


def curves_plot(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], xlabel: str) -> str:
    """Side-by-side panels (title -> {line label -> (x, y)}), e.g. training loss and validation
    metrics per epoch, one line per method (mean over seeds), one legend for all."""
    pw, ph, gap, left, top = 300.0, 220.0, 70.0, 60.0, 26.0
    body: list[str] = []
    labels: dict[str, str] = {}
    for k, (title, lines) in enumerate(panels.items()):
        pts = [(x, y) for xs, ys in lines.values() for x, y in zip(xs, ys) if finite(x, y)]
        f = Frame([x for x, _ in pts], [y for _, y in pts], left + k * (pw + gap), top, pw, ph)
        body.append(f'<text x="{f.x0 + pw / 2:.1f}" y="{top - 10:.1f}" text-anchor="middle" class="t">{escape(title)}</text>')
        body += f.axes(xlabel, "", integer_x=True)
        for label, (xs, ys) in lines.items():
            color = labels.setdefault(label, LINE_COLORS[len(labels) % len(LINE_COLORS)])
            line = [(f.sx(x), f.sy(y)) for x, y in zip(xs, ys) if finite(x, y)]
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            body.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.4"/>')
            body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.8" fill="{color}"/>' for x, y in line]
    right = left + len(panels) * (pw + gap) - gap + 20
    body += legend(right, top + 4, [(f'<path d="M-6 0H6" stroke="{c}" stroke-width="2"/>', n) for n, c in labels.items()])
    longest = max((len(n) for n in labels), default=0)
    return _svg(right + 24 + 6.2 * longest, max(top + ph + 44, top + 17 * len(labels) + 10), "training curves", body)
