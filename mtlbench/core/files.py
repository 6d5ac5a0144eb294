"""Result files: one JSON per cell, schema-versioned, written atomically.

A result holds the resolved cell config and its hash, per-split metric values of the selected
epoch, the selection rule, conflict statistics, cost, status and provenance. Aggregation and
the site read these files only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import orjson

from mtlbench.core.cell import RESULT_SCHEMA, Cell, config_hash
from mtlbench.core.errors import ResultError

REQUIRED = ("schema", "config_hash", "cell", "status")
MIGRATABLE = ("mtlbench.result/2",)  # older schemas `mtlbench migrate` carries forward (mtlbench/report/migrate.py)


class SchemaMismatch(ResultError):
    """A result file written with another result schema."""

    def __init__(self, message: str, schema: str) -> None:
        super().__init__(message)
        self.schema = schema


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON via a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_write_text(path, dumps_result(data))


def dumps_result(data: dict[str, Any]) -> str:
    """A result file's text as the store writes it: compact (no indentation; a third of an
    indented file was spaces), one line, NaN and Inf stored as null."""
    return json.dumps(_clean(data), separators=(",", ":"), allow_nan=False) + "\n"


def _clean(obj: Any) -> Any:
    """JSON has no NaN/Inf: store them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def read_result(path: Path) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = json.loads(raw)  # NaN or Infinity tokens: read, so that the schema names the field
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: not valid JSON ({e}); delete it to re-run the cell") from None
    except OSError as e:
        raise ResultError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ResultError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["schema"] != RESULT_SCHEMA:
        hint = f" (`mtlbench migrate {Path(path).parent}` rewrites it, values unchanged)" if data["schema"] in MIGRATABLE else ""
        message = f"{path}: schema {data['schema']!r}, this mtlbench reads {RESULT_SCHEMA!r}{hint}"
        raise SchemaMismatch(message, str(data["schema"]))
    return data


def check_hash(path: Path, data: dict[str, Any]) -> None:
    """The stored hash must match the config stored beside it (no hand-edited configs)."""
    cell = data.get("cell")
    if not isinstance(cell, dict):
        raise ResultError(f"{path}: field `cell` must be an object")
    try:
        identity = Cell(**cell).identity()
    except TypeError as e:
        raise ResultError(f"{path}: field `cell` does not describe a cell ({e})") from None
    if config_hash(identity) != data["config_hash"]:
        raise ResultError(
            f"{path}: config_hash {data['config_hash']} does not match the stored config (hash {config_hash(identity)})"
        )


def iter_result_files(dirs: list[Path]) -> Iterator[Path]:
    """The ``*.json`` files under ``dirs`` (files given as they are), hidden files and folders
    left out, each folder's in path order (part by part, as paths compare)."""
    for d in dirs:
        d = Path(d)
        if d.is_file():
            yield d
        elif d.is_dir():
            found: list[str] = []
            for folder, subdirs, names in os.walk(d):
                subdirs[:] = [s for s in subdirs if not s.startswith(".")]
                found.extend(os.path.join(folder, n) for n in names if n.endswith(".json") and not n.startswith("."))
            found.sort(key=lambda p: p.split(os.sep))
            yield from map(Path, found)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, fsync, then rename over ``path``:
    readers see the old file or the new one, never a partial one."""
    with atomic_file(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """A file object whose content replaces ``path`` atomically when the block ends without an
    error. Temporary files are named ``.<name>.<random>.tmp`` beside ``path``. ``durable``:
    fsync before the rename (survives a power loss, not only a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        f: IO[Any]
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_temp_files(path: Path) -> list[Path]:
    """Delete temporary files an interrupted :func:`atomic_file` left for ``path``. Call it only
    while no one else writes ``path`` (under the cell's lock)."""
    removed = []
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed
