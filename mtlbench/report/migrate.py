"""`mtlbench migrate`: rewrite result files of an older schema in the current one, in place.

``mtlbench.result/2`` → ``/3``: the file is written compactly (no indentation), and the
per-sample, per-layer conflict series (``conflict.layer_series``: two lists of lists of numbers,
most of a flagship file) becomes two packed columnar arrays (:mod:`mtlbench.core.packed`): the
mean cosine as float32 — every recorded value (6 significant digits) round-trips exactly, which
the migration checks — and p% as the count of conflicting task pairs (p% = 100 × count / pairs;
the count is checked to give the recorded p% back). No other value changes, so the tables built
from the files are the same byte for byte. Each migrated file is checked with the strict reader
(the one ``validate`` uses) before it replaces the old one; a file that fails stays as it was and
is reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mtlbench.core.cell import RESULT_SCHEMA
from mtlbench.core.errors import ResultError
from mtlbench.core.files import MIGRATABLE, atomic_write_text, check_hash, dumps_result, iter_result_files
from mtlbench.core.packed import count_dtype, pack, unpack
from mtlbench.core.result import parse_result


class MigrationError(ResultError):
    """A file that cannot be carried to the current schema without changing a value."""


def _from_2(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)  # keys keep their order
    out["schema"] = "mtlbench.result/3"
    conflict = data.get("conflict")
    series = conflict.get("layer_series") if isinstance(conflict, dict) else None
    if isinstance(series, dict):
        assert isinstance(conflict, dict)
        n_pairs = len(conflict.get("pairs") or [])
        cos = [[math.nan if v is None else v for v in row] for row in series.get("mean_cos") or []]
        block = pack(cos, "float32")
        if not _same(unpack(block, digits=6), cos):
            raise MigrationError(
                "conflict.layer_series.mean_cos: a value has more than 6 significant digits; float32 would change it"
            )
        counts = [[_pairs(p, n_pairs) for p in row] for row in series.get("p_pct") or []]
        out["conflict"] = {
            **conflict,
            "layer_series": {"mean_cos": block, "conflicting_pairs": pack(counts, count_dtype(n_pairs))},
        }
    return out


def _same(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(u == v or (u != u and v != v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def _pairs(p: Any, n_pairs: int) -> int:
    """The number of conflicting pairs behind a recorded p% (6 significant digits of 100 k / n)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not n_pairs:
        raise MigrationError(f"conflict.layer_series.p_pct: {p!r} with {n_pairs} task pairs is not a share of pairs")
    k = round(p * n_pairs / 100)
    if abs(100 * k / n_pairs - p) > 1e-4 * max(1.0, abs(p)):
        raise MigrationError(f"conflict.layer_series.p_pct: {p!r} is not 100 × k / {n_pairs} for a whole number of pairs k")
    return k


# schema -> the function carrying its data one schema forward
STEPS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"mtlbench.result/2": _from_2}
if tuple(STEPS) != MIGRATABLE:  # the readers' hint (core/files.py) names the schemas migrated here
    raise RuntimeError(f"migrations from {tuple(STEPS)}, readers say {MIGRATABLE}")


def migrate_data(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a result file's object) in the current schema."""
    while data.get("schema") != RESULT_SCHEMA:
        step = STEPS.get(str(data.get("schema")))
        if step is None:
            raise MigrationError(
                f"schema {data.get('schema')!r}: no migration to {RESULT_SCHEMA} (this mtlbench migrates "
                f"{', '.join(STEPS)}); re-run those cells"
            )
        data = step(data)
    return data


@dataclass
class MigrationReport:
    migrated: list[Path] = field(default_factory=list)
    current: int = 0  # files already in the current schema (left as they are)
    problems: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def migrate_paths(paths: list[Path], dry_run: bool = False) -> MigrationReport:
    """Migrate every result file under ``paths`` (files or folders) in place; ``dry_run``: only
    say what would change."""
    report = MigrationReport()
    for path in iter_result_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, ValueError) as e:
            report.problems.append(f"{path}: cannot be read as JSON ({e}); left as it is")
            continue
        if not isinstance(data, dict) or "schema" not in data:
            report.problems.append(f"{path}: not a result file (no `schema` field); left as it is")
            continue
        if data["schema"] == RESULT_SCHEMA:
            report.current += 1
            continue
        try:
            new = migrate_data(data)
            check_hash(path, new)
        except ResultError as e:
            report.problems.append(f"{path}: {e}; left as it is")
            continue
        result, found = parse_result(new)
        if result is None or found:
            first = found[0] if found else "unreadable"
            report.problems.append(f"{path}: the migrated file would not validate ({first}); left as it is")
            continue
        out = dumps_result(new)
        report.bytes_before += len(text.encode("utf-8"))
        report.bytes_after += len(out.encode("utf-8"))
        if not dry_run:
            atomic_write_text(path, out)
        report.migrated.append(path)
    return report
