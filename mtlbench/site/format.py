"""How the site writes numbers: table cells, sort keys and counts (jinja filters, and the
tables that pages build in Python)."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def thousands(value: Any) -> str:
    """An integer count with thousands separators, ``–`` when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{int(value):,}"


def sort_value(value: Any) -> str:
    """The ``data-v`` a table cell sorts by: the full-precision number, empty when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return repr(float(value))


def finite(*values: Any) -> bool:
    """Whether every value is a finite int or float (not a bool, None, NaN or a string): result
    files are data from outside."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
