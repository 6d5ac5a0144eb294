"""Dataset plumbing shared by tasks: in-memory and memory-mapped splits, multi-input splits,
batching, the data folder, content hashes and atomic stores."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mtlbench.core.errors import DataError

STORE_MARKER = "COMPLETE"


def data_root() -> Path:
    """Folder of prepared datasets: ``$MTLBENCH_DATA`` or ``~/.cache/mtlbench``."""
    env = os.environ.get("MTLBENCH_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtlbench"


class Split:
    """A split held as whole tensors: ``x`` (N, ...) and one target tensor per sub-task.

    Batches are gathered by index on contiguous tensors (no per-row Python loop).
    """

    def __init__(self, x: Tensor, targets: Mapping[str, Tensor]) -> None:
        n = x.shape[0]
        for name, t in targets.items():
            if t.shape[0] != n:
                raise ValueError(f"target {name!r} has {t.shape[0]} rows, inputs have {n}")
        self.x = x
        self.targets = dict(targets)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[index], {k: v[index] for k, v in self.targets.items()}

    def subset(self, n: int) -> "Split":
        """The first ``n`` rows (the store is already shuffled with a fixed seed)."""
        return Split(self.x[:n], {k: v[:n] for k, v in self.targets.items()})

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])


def build_store(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a dataset folder once, atomically.

    ``build(tmp)`` writes into a fresh temporary sibling folder; on success a marker file is
    added and the folder is renamed into place, so an interrupted build never leaves a
    half-written store behind. Returns ``target``.
    """
    if (target / STORE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        (tmp / STORE_MARKER).write_text("ok\n")
        if target.exists():  # an incomplete leftover (no marker): replace it
            if (target / STORE_MARKER).exists():
                return target  # another process finished first
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / STORE_MARKER).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- memory-mapped splits


class MappedColumn:
    """One fixed-shape column of a store, kept on disk: a list of read-only NumPy arrays (one
    per arrow record batch) that view the memory-mapped file without copying it."""

    def __init__(self, chunks: Sequence[np.ndarray]) -> None:
        if not chunks:
            raise ValueError("a column needs at least one chunk")
        self.chunks = list(chunks)
        self.row_shape = self.chunks[0].shape[1:]
        self.dtype = self.chunks[0].dtype
        for c in self.chunks:
            if c.shape[1:] != self.row_shape or c.dtype != self.dtype:
                raise ValueError(f"chunks disagree: {c.shape[1:]} {c.dtype} vs {self.row_shape} {self.dtype}")
        self.starts = np.cumsum([0] + [c.shape[0] for c in self.chunks])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows by global index, gathered with one fancy index per chunk (no per-row loop)."""
        if len(self.chunks) == 1:
            return self.chunks[0][rows]
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[c][rows[sel] - self.starts[c]]
        return out


class MappedSplit(Split):
    """A split whose columns stay memory-mapped on disk until a batch asks for rows.

    Same interface as :class:`Split` (``len``, ``batch(index)``, ``batches``, ``subset``).
    ``rows`` selects and orders the store rows this split uses (a validation split carved from
    the stored training rows is a row subset); ``dtypes`` casts columns per batch (e.g. int8
    labels to int64).
    """

    def __init__(
        self,
        x: MappedColumn,
        targets: Mapping[str, MappedColumn],
        rows: np.ndarray | None = None,
        dtypes: Mapping[str, torch.dtype] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        n = len(x)
        for name, t in targets.items():
            if len(t) != n:
                raise ValueError(f"target {name!r} has {len(t)} rows, inputs have {n}")
        self.x = x  # type: ignore[assignment]  # a MappedSplit's columns stay on disk
        self.targets = dict(targets)  # type: ignore[arg-type]
        self.rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        self.dtypes = dict(dtypes or {})
        self.transform = transform  # turns a gathered batch of x into model inputs (e.g. uint8 -> normalised float)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def _tensor(self, name: str, column: MappedColumn, rows: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(column.take(rows)))
        return t.to(self.dtypes[name]) if name in self.dtypes else t

    def batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        x = self._tensor("x", self.x, rows)  # type: ignore[arg-type]
        if self.transform is not None:
            x = self.transform(x)
        return x, {k: self._tensor(k, v, rows) for k, v in self.targets.items()}  # type: ignore[arg-type]

    def subset(self, n: int) -> "MappedSplit":
        """The first ``n`` rows of this split's order."""
        return MappedSplit(self.x, self.targets, self.rows[:n], self.dtypes, self.transform)  # type: ignore[arg-type]

    def select(self, rows: np.ndarray) -> "MappedSplit":
        """The rows at positions ``rows`` of this split, in that order."""
        return MappedSplit(self.x, self.targets, self.rows[np.asarray(rows, dtype=np.int64)], self.dtypes, self.transform)  # type: ignore[arg-type]


def arrow_columns(dataset: Any, names: Iterable[str], where: str) -> dict[str, MappedColumn]:
    """Zero-copy NumPy views of fixed-shape columns (``Value``, ``Array2D``..``Array5D``) of a
    HuggingFace ``datasets.Dataset`` loaded from disk (memory-mapped arrow files).

    ``where`` names the store in errors. A ragged or null-holding column is a :class:`DataError`.
    """
    import pyarrow as pa

    if getattr(dataset, "_indices", None) is not None:
        raise DataError(f"{where}: the stored dataset has an indices mapping; rebuild the store")
    table = dataset.data.table
    out = {}
    for name in names:
        if name not in dataset.column_names:
            raise DataError(
                f"{where}: column {name!r} missing (has {dataset.column_names}); delete the store and prepare it again"
            )
        shape = tuple(getattr(dataset.features[name], "shape", ()))
        chunks = []
        for chunk in table.column(name).chunks:
            values = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            while (
                pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
            ):
                values = values.flatten()
            try:
                array = values.to_numpy(zero_copy_only=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(
                    f"{where}: column {name!r} cannot be memory-mapped ({e}); delete the store and prepare it again"
                ) from None
            if array.size != len(chunk) * int(np.prod(shape, dtype=np.int64)):
                raise DataError(
                    f"{where}: column {name!r} is ragged (expected rows of shape {shape}); delete the store and prepare it again"
                )
            chunks.append(array.reshape(len(chunk), *shape))
        if not chunks:
            chunks.append(np.empty((0, *shape)))
        out[name] = MappedColumn(chunks)
    return out


# ---------------------------------------------------------------- stores keyed by content

CONTENT_HASH_FILE = "CONTENT_HASH"


def content_hash(files: Iterable[Path], root: Path, block: int = 1 << 20) -> str:
    """SHA-256 (first 16 hex digits) over the files' paths relative to ``root`` and their bytes."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(Path(path).relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def stored_content_hash(target: Path) -> str | None:
    """The content hash a complete store was built from, or None."""
    path = target / CONTENT_HASH_FILE
    if not (target / STORE_MARKER).exists() or not path.exists():
        return None
    return path.read_text().strip()


def build_store_for(target: Path, content: str, build: Callable[[Path], None]) -> Path:
    """Build ``target`` from source data whose content hashes to ``content``.

    A complete store built from the same content is reused. Otherwise the new store is built
    beside the old one (atomically, as :func:`build_store`) and replaces it only once complete:
    a failed build leaves the previous store, or nothing, never a half-written one.
    """
    if stored_content_hash(target) == content:
        return target

    def build_with_hash(tmp: Path) -> None:
        build(tmp)
        (tmp / CONTENT_HASH_FILE).write_text(content + "\n")

    tag = uuid.uuid4().hex[:8]
    staged = build_store(target.parent / f".{target.name}.new-{tag}", build_with_hash)
    old = target.parent / f".{target.name}.old-{tag}"
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------- multi-input splits


class MultiInputSplit:
    """A split of a multi-input task: every sub-task has its own inputs, one :class:`Split` each
    (holding that sub-task's target under its name). Batches are ``({task: x}, {task: y})``.

    Shuffled batches (training, ``generator`` given) are steps with one batch of every sub-task;
    an epoch lasts as many steps as the largest sub-task fills (its length is the split's
    ``len``), and a smaller sub-task starts over, reshuffled, whenever it runs out (LibMTL's
    multi-input loop; here every epoch starts each sub-task afresh). Unshuffled batches
    (evaluation) go through each sub-task's samples once, one sub-task at a time.
    """

    def __init__(self, parts: Mapping[str, Split]) -> None:
        if not parts:
            raise ValueError("a multi-input split needs at least one sub-task")
        for task, part in parts.items():
            if task not in part.targets:
                raise ValueError(f"sub-task {task!r}: its split holds targets {sorted(part.targets)}, not its own")
        self.parts = dict(parts)

    def __len__(self) -> int:
        return max(len(p) for p in self.parts.values())

    def for_tasks(self, tasks: Sequence[str]) -> "MultiInputSplit":
        """The sub-tasks ``tasks`` only (a single-task model of a multi-input task)."""
        return MultiInputSplit({t: self.parts[t] for t in tasks})

    def subset(self, n: int) -> "MultiInputSplit":
        return MultiInputSplit({t: p.subset(n) for t, p in self.parts.items()})

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        if generator is None:
            for task, part in self.parts.items():
                for x, y in part.batches(batch_size):
                    yield {task: x}, {task: y[task]}
            return
        short = {t: len(p) for t, p in self.parts.items() if len(p) < batch_size}
        if short:
            raise ValueError(f"batch_size {batch_size} exceeds the training samples of sub-tasks {short}")
        steps = len(self) // batch_size if drop_last else -(-len(self) // batch_size)
        streams = {t: _index_stream(len(p), batch_size, generator) for t, p in self.parts.items()}
        for _ in range(steps):
            xs, ys = {}, {}
            for task, part in self.parts.items():
                x, y = part.batch(next(streams[task]))
                xs[task], ys[task] = x, y[task]
            yield xs, ys


def _index_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless full batches of indices into ``n`` rows, reshuffled after every pass."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def open_store(path: Path, command: str, contents: str, part: str = "") -> Any:
    """The HF ``datasets`` store at ``path`` (its sub-folder ``part``, if given), opened
    memory-mapped. A missing or unreadable store is a DataError that names ``command``, the
    ``mtlbench prepare`` line that builds it from a source holding ``contents``."""
    import datasets

    datasets.disable_progress_bars()
    if not (path / STORE_MARKER).exists():
        raise DataError(f"{path}: store not found. Build it once with `{command}` ({contents})")
    try:
        return datasets.load_from_disk(str(path / part))
    except Exception as e:
        raise DataError(f"{path / part}: store cannot be read ({type(e).__name__}: {e}); run `{command}` again") from None
