"""Small line charts written directly as inline SVG, for the per-run pages.

A site holds one page per run (thousands of them), so these pages draw their curves here in
well under a millisecond. The aggregate plots of the group pages are in
:mod:`mtlbench.site.plots`. Every label is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

from mtlbench.site.format import finite

PALETTE = ("#2457c5", "#d9730d", "#137333", "#a50e0e", "#7b3fb5", "#8c6d1f", "#00838f", "#c2185b", "#455a64", "#6d8f00")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(round((last - first) / step) + 1)]


def tick_label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "",
    hline: float | None = None,
    width: int = 440,
    height: int = 230,
) -> str:
    """One polyline (with point markers) per named series of (x, y); NaN/None points are skipped."""
    left, right, top, bottom = 52, 12, 24, 40
    clean = {name: [(float(x), float(y)) for x, y in zip(xs, ys) if finite(x, y)] for name, (xs, ys) in series.items()}
    points = [p for pts in clean.values() for p in pts]
    legend_h = 16 * ((len(clean) + 2) // 3)
    h_total = height + legend_h
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {h_total}" '
        f'width="{width}" height="{h_total}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="t">{escape(title)}</text>',
    ]
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="m">no data</text></svg>')
        return "".join(out)
    ys = [y for _, y in points] + ([hline] if hline is not None else [])
    xt = nice_ticks(min(x for x, _ in points), max(x for x, _ in points))
    yt = nice_ticks(min(ys), max(ys))
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + pw * (x - xt[0]) / (xt[-1] - xt[0])

    def sy(y: float) -> float:
        return top + ph * (1 - (y - yt[0]) / (yt[-1] - yt[0]))

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="f"/>')
    for t in yt:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="g"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{tick_label(t)}</text>'
        )
    for t in xt:
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{tick_label(t)}</text>')
    if hline is not None:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(hline):.1f}" y2="{sy(hline):.1f}" class="z"/>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text transform="translate(12 {top + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(pts) <= 60:
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"/>' for x, y in pts)
        lx, ly = left + (i % 3) * (pw / 3), height + 4 + 16 * (i // 3)
        out.append(
            f'<rect x="{lx:.1f}" y="{ly}" width="12" height="3" fill="{color}"/>'
            f'<text x="{lx + 16:.1f}" y="{ly + 5}">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
