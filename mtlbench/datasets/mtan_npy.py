"""MTAN's preprocessed npy layout (NYUv2, CityScapes): checking, conversion to a HuggingFace
``datasets`` store, and memory-mapped loading.

The layout (Liu, Johns & Davison, CVPR 2019; the copies CAGrad, Nash-MTL, FAMO and Recon
download) is ``<source>/{train,val}/<modality>/<i>.npy`` with ``i = 0 .. n-1``: images
(H, W, 3) float, class labels (H, W) with ``-1`` = ignore, depth (H, W, 1) with 0 = no
measurement, surface normals (H, W, 3) with a zero vector = no measurement. The source's
``val`` folder is the split the literature reports on: it becomes our ``test`` split.

The store holds channel-first float32 images/depth/normals and int8 labels (one row per
image, with the source index), written with ``datasets`` and read back as zero-copy views of
its memory-mapped arrow files (:func:`mtlbench.datasets.splits.arrow_columns`). It is built once per
source content: the store records the SHA-256 of the source files, and ``prepare`` with the
same files is a no-op.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlbench.core.errors import DataError
from mtlbench.datasets.splits import MappedColumn, arrow_columns, build_store_for, content_hash
from mtlbench.datasets.splits import open_store as open_hf_store

STORE_FORMAT = "1"
SOURCE_SPLITS = {"train": "train", "test": "val"}  # store split <- source folder
FILE_RE = re.compile(r"^(\d+)\.npy$")


@dataclass(frozen=True)
class Modality:
    """One kind of array in the layout: its source folder, its store column and its channels
    (0: an (H, W) map of class labels; otherwise (H, W, channels) floats)."""

    folder: str
    column: str
    channels: int
    what: str

    def expected(self, size: tuple[int, int]) -> tuple[int, ...]:
        return size if self.channels == 0 else (*size, self.channels)


IMAGE = Modality("image", "image", 3, "an RGB image")
DEPTH = Modality("depth", "depth", 1, "a depth map")


@dataclass(frozen=True)
class Layout:
    """A dataset in MTAN's npy layout: its modalities (the first is the image) and class count."""

    task: str
    modalities: tuple[Modality, ...]
    n_classes: int

    def example(self) -> str:
        return ", ".join(f"{m.folder}/" for m in self.modalities)


@dataclass
class Scan:
    """What ``scan`` found: per store split and modality the files in index order."""

    files: dict[str, dict[str, list[Path]]] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)
    content: str = ""

    def counts(self) -> dict[str, int]:
        return {split: len(next(iter(mods.values()))) for split, mods in self.files.items()}


def _fix(layout: Layout, source: Path) -> str:
    return (
        f"fix or re-download the copy, then run `mtlbench prepare {layout.task} --source {source}` again "
        f"(MTAN's preprocessed copy: train/ and val/ holding {layout.example()} with 0.npy, 1.npy, ...)"
    )


def scan(source: Path, layout: Layout) -> Scan:
    """Check every file of the layout (names, shapes, dtypes, label values) and hash them all."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(
            f"{source}: no such folder; pass the folder holding MTAN's preprocessed {layout.task} "
            f"(train/ and val/, each with {layout.example()})"
        )
    found = Scan()
    for split, folder in SOURCE_SPLITS.items():
        found.files[split] = {}
        n_images = None
        for m in layout.modalities:
            directory = source / folder / m.folder
            if not directory.is_dir():
                raise DataError(f"{directory}: folder missing ({m.what}); {_fix(layout, source)}")
            indices = sorted(int(match.group(1)) for p in directory.iterdir() if (match := FILE_RE.match(p.name)))
            if not indices:
                raise DataError(f"{directory}: no <i>.npy files; {_fix(layout, source)}")
            n = n_images if n_images is not None else indices[-1] + 1
            missing = sorted(set(range(n)) - set(indices))
            if missing:
                raise DataError(
                    f"{directory / f'{missing[0]}.npy'}: missing ({len(missing)} of {n} files missing in {directory}); "
                    + _fix(layout, source)
                )
            if len(indices) != n:
                extra = [i for i in indices if i >= n]
                raise DataError(
                    f"{directory / f'{extra[0]}.npy'}: unexpected file: {directory.parent / layout.modalities[0].folder} "
                    f"holds {n} images; {_fix(layout, source)}"
                )
            n_images = n
            found.files[split][m.column] = [directory / f"{i}.npy" for i in range(n)]
    first = found.files["train"][layout.modalities[0].column][0]
    height, width = _header(first, layout, source)[0][:2]
    found.size = (height, width)
    for mods in found.files.values():
        for m in layout.modalities:
            for path in mods[m.column]:
                _check_file(path, m, found.size, layout, source)
    all_files = [p for mods in found.files.values() for paths in mods.values() for p in paths]
    found.content = content_hash(all_files, source)
    return found


def _header(path: Path, layout: Layout, source: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: truncated or not a .npy array ({e}); {_fix(layout, source)}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e}); {_fix(layout, source)}") from None
    return tuple(array.shape), array.dtype


def _check_file(path: Path, m: Modality, size: tuple[int, int], layout: Layout, source: Path) -> None:
    shape, dtype = _header(path, layout, source)
    expected = m.expected(size)
    kinds = "float or integer" if m.channels == 0 else "float"
    ok_dtype = np.issubdtype(dtype, np.floating) or (m.channels == 0 and np.issubdtype(dtype, np.integer))
    if shape != expected or not ok_dtype:
        raise DataError(
            f"{path}: expected {m.what} of shape {expected} ({kinds}), found shape {shape} dtype {dtype}; " + _fix(layout, source)
        )
    if m.channels == 0:
        values = np.unique(np.load(path, allow_pickle=False))
        bad = values[~np.isfinite(values) | (values != np.round(values)) | (values < -1) | (values >= layout.n_classes)]
        if bad.size:
            raise DataError(
                f"{path}: label values {bad[:5].tolist()} outside -1 (ignore) .. {layout.n_classes - 1}: "
                f"not the {layout.n_classes}-class labels of {layout.task}; " + _fix(layout, source)
            )


def prepare(source: Path, target: Path, layout: Layout) -> Path:
    """Check ``source`` and build the store at ``target`` unless one from the same content exists."""
    found = scan(source, layout)
    source = Path(source).resolve()

    def build(out: Path) -> None:
        _write(out, found, layout)
        meta = {
            "task": layout.task,
            "store_format": STORE_FORMAT,
            "source": str(source),
            "content_hash": found.content,
            "counts": found.counts(),
            "image_size": list(found.size),
            "n_classes": layout.n_classes,
            "source_splits": SOURCE_SPLITS,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))

    return build_store_for(Path(target), found.content, build)


def _write(out: Path, found: Scan, layout: Layout) -> None:
    import datasets

    h, w = found.size
    features = {"source_index": datasets.Value("int64")}
    for m in layout.modalities:
        features[m.column] = (
            datasets.Array2D((h, w), "int8") if m.channels == 0 else datasets.Array3D((m.channels, h, w), "float32")
        )
    features = datasets.Features(features)
    cache = out / ".build-cache"
    splits = {}
    for split, files in found.files.items():
        splits[split] = datasets.Dataset.from_generator(
            _rows,
            features=features,
            cache_dir=str(cache),
            gen_kwargs={"files": files, "layout": layout},
            fingerprint=f"{found.content}-{split}",
            writer_batch_size=16,
        )
    datasets.DatasetDict(splits).save_to_disk(str(out))
    shutil.rmtree(cache, ignore_errors=True)


def _rows(files: dict[str, list[Path]], layout: Layout):
    n = len(files[layout.modalities[0].column])
    for i in range(n):
        row: dict[str, Any] = {"source_index": i}
        for m in layout.modalities:
            array = np.load(files[m.column][i], allow_pickle=False)
            if m.channels == 0:
                row[m.column] = array.astype(np.int8)
            else:
                row[m.column] = np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32)
        yield row


def open_store(path: Path, layout: Layout) -> dict[str, dict[str, MappedColumn]]:
    """The store's splits as memory-mapped columns; a clear error when it was never prepared."""
    dd = open_hf_store(
        path,
        f"mtlbench prepare {layout.task} --source PATH",
        f"PATH: MTAN's preprocessed copy, train/ and val/ each with {layout.example()}",
    )
    columns = [m.column for m in layout.modalities]
    out = {}
    for split in SOURCE_SPLITS:
        if split not in dd:
            raise DataError(f"{path}: split {split!r} missing; prepare the store again")
        out[split] = arrow_columns(dd[split], columns, f"{path} [{split}]")
    return out
