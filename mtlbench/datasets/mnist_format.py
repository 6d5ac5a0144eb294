"""MNIST-format image sets (MNIST, Fashion-MNIST) and the two-item overlay of MultiMNIST-style tasks.

Readers accept the idx files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte``,
``t10k-...``; Fashion-MNIST uses the same names and format) or a HuggingFace copy (a
``save_to_disk`` folder or the hub's ``train-*.parquet``/``test-*.parquet`` with ``image`` and
``label`` columns). The overlay places one 28x28 item in the top-left corner and another in the
bottom-right corner of a 36x36 canvas, overlapping pixels taking the maximum (Sabour et al.,
2017; Sener & Koltun, 2018; Lin et al., 2019 for the Fashion variants).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from mtlbench.core.errors import DataError

CANVAS = 36
DIGIT = 28
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(N, 28, 28) + (N, 28, 28) uint8 items -> (N, 36, 36) uint8 images."""
    n = left.shape[0]
    a = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    b = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    a[:, :DIGIT, :DIGIT] = left
    b[:, CANVAS - DIGIT :, CANVAS - DIGIT :] = right
    return np.maximum(a, b)


def read_idx(path: Path, name: str = "MNIST") -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e}); re-download the {name} idx files") from None
    if len(data) < 8:
        raise DataError(f"{path}: truncated ({len(data)} bytes); re-download it")
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        shape: tuple[int, ...]
        expected, offset, shape = count * rows * cols, 16, (count, rows, cols)
    elif magic == 2049:
        expected, offset, shape = count, 8, (count,)
    else:
        raise DataError(f"{path}: magic number {magic}, expected 2051 (images) or 2049 (labels): not an {name} idx file")
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: holds {len(data) - offset} bytes of data, header says {expected} {shape}; "
            "the file is truncated, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find(source: Path, stem: str, folders: Sequence[str]) -> Path | None:
    for folder in folders:
        for fname in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (source / folder / fname).is_file():
                return source / folder / fname
    return None


def read_mnist_format(
    source: Path, name: str = "MNIST", folders: Sequence[str] = (".", "raw", "MNIST/raw")
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read an MNIST-format set from idx files (looked up in ``folders`` under ``source``) or a
    HuggingFace copy; return ``{"train"/"test": (uint8 images (N, 28, 28), int64 labels)}``."""
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"{source}: no such file or folder; pass the folder holding {name}'s idx files (or a HuggingFace {name} copy)"
        )
    found = {k: _find(source, v, folders) for k, v in IDX_FILES.items()}
    if all(found.values()):
        paths = {k: v for k, v in found.items() if v is not None}
        out = {}
        for split in ("train", "test"):
            images, labels = read_idx(paths[f"{split}_images"], name), read_idx(paths[f"{split}_labels"], name)
            if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT):
                raise DataError(f"{found[f'{split}_images']}: images of shape {images.shape[1:]}, expected ({DIGIT}, {DIGIT})")
            if images.shape[0] != labels.shape[0]:
                raise DataError(f"{found[f'{split}_labels']}: {labels.shape[0]} labels for {images.shape[0]} images")
            out[split] = (images, labels.astype(np.int64))
        return out
    return _read_hf_copy(source, name, [IDX_FILES[k] for k, v in found.items() if v is None])


def _read_hf_copy(source: Path, name: str, missing_idx: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import datasets

    try:
        if (source / "dataset_dict.json").exists():
            dd = datasets.load_from_disk(str(source))
        else:
            files = {s: sorted(str(p) for p in source.rglob(f"{s}*.parquet")) for s in ("train", "test")}
            if not all(files.values()):
                raise DataError(
                    f"{source}: no {name} found. Expected the idx files ({', '.join(missing_idx)} missing), "
                    "a `save_to_disk` folder with train/test splits, or the hub's train-*.parquet and test-*.parquet"
                )
            dd = datasets.load_dataset("parquet", data_files=files)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{source}: cannot be read as a HuggingFace {name} copy ({type(e).__name__}: {e})") from None
    out = {}
    for split in ("train", "test"):
        if split not in dd:
            raise DataError(f"{source}: HuggingFace copy has splits {list(dd)}, expected 'train' and 'test'")
        ds = dd[split]
        if not {"image", "label"} <= set(ds.column_names):
            raise DataError(f"{source} [{split}]: columns {ds.column_names}, expected 'image' and 'label'")
        images = np.stack([np.asarray(im, dtype=np.uint8) for im in ds["image"]])
        if images.shape[1:] != (DIGIT, DIGIT):
            raise DataError(f"{source} [{split}]: images of shape {images.shape[1:]}, expected ({DIGIT}, {DIGIT})")
        out[split] = (images, np.asarray(ds["label"], dtype=np.int64))
    return out
