"""Mapping a function over items in forked worker processes.

A forked child inherits the parent's memory, so the function may be a closure over large
loaded state (result tables, templates, pages): only the items and the return values cross
between processes, pickled. Where the platform cannot fork, or there is too little work to
pay for the processes, the map runs in this process.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_FN: list[Callable[[Any], Any] | None] = [None]  # what the forked children call


def fork_map(fn: Callable[[T], R], items: Sequence[T], workers: int, min_items: int) -> list[R]:
    """``[fn(x) for x in items]``, in ``workers`` forked processes when there are at least
    ``min_items`` items (and fork exists here), else in this process. Items and results must
    pickle; ``fn`` need not."""
    if workers < 2 or len(items) < max(min_items, 2) or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(x) for x in items]
    _FN[0] = fn
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_call, items, chunksize=max(1, len(items) // (8 * workers)))
    finally:
        _FN[0] = None


def _call(item: Any) -> Any:
    fn = _FN[0]
    assert fn is not None, "fork_map's function is set before the workers fork"
    return fn(item)


_SHARED: dict[Any, Any] = {}  # key -> the last value returned under it (per process)


def shared(key: Any, value: Any) -> Any:
    """``value``, or the equal value already returned under ``key``: thousands of result files
    carry the same declarations, and one object pickles once (a worker's answers, the parse
    cache) where equal copies pickle each time."""
    seen = _SHARED.get(key, _SHARED)
    if seen is not _SHARED and seen == value:
        return seen
    _SHARED[key] = value
    return value
