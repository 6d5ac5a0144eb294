"""The embedded MultiMNIST task: real digits, HF datasets storage, disjoint splits, full-MNIST prepare."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.datasets.splits import STORE_MARKER
from mtlbench.core.errors import DataError
from mtlbench.grid.plugins import discover
from tests.conftest import REPO

MultiMNIST = discover(REPO).tasks["multimnist"]
mod = __import__(MultiMNIST.__module__, fromlist=["x"])


@pytest.fixture(scope="module")
def store(data_dir: Path):
    task = MultiMNIST()
    splits = task.load(data_dir)
    return task, splits, task.store_path(data_dir)


def test_splits_shapes_and_labels(store):
    task, splits, path = store
    assert {k: len(v) for k, v in splits.items()} == {"train": 10_000, "val": 1_500, "test": 3_000}
    x, y = splits["train"].batch(torch.arange(8))
    assert x.shape == (8, 1, 36, 36) and x.dtype == torch.float32
    assert set(y) == {"left", "right"} and all(int(v.min()) >= 0 and int(v.max()) <= 9 for v in y.values())
    assert (path / STORE_MARKER).exists() and (path / "dataset_dict.json").exists()  # HF save_to_disk layout


def test_images_are_overlays_of_the_real_source_digits(store, data_dir):
    import datasets

    _, _, path = store
    ds = datasets.load_from_disk(str(path))["test"].with_format("numpy")[:50]
    digits, labels = mod.load_embedded_digits()
    for img, l, r, ls, rs in zip(ds["image"], ds["left"], ds["right"], ds["left_src"], ds["right_src"]):
        assert labels[ls] == l and labels[rs] == r and ls != rs
        expected = mod.overlay(digits[ls][None], digits[rs][None])[0]
        assert np.array_equal(img, expected)


def test_source_digits_are_disjoint_across_splits(store):
    import datasets

    _, _, path = store
    dd = datasets.load_from_disk(str(path))
    used = {s: set(dd[s]["left_src"]) | set(dd[s]["right_src"]) for s in ("train", "val", "test")}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    assert len(used["train"]) > 3000 and len(used["test"]) > 900


def test_store_is_built_once(store, data_dir):
    task, _, path = store
    stamp = (path / STORE_MARKER).stat().st_mtime_ns
    task.load(data_dir)
    assert (path / STORE_MARKER).stat().st_mtime_ns == stamp


def test_build_is_deterministic(tmp_path):
    a = MultiMNIST().load(tmp_path / "a")
    b = MultiMNIST().load(tmp_path / "b")
    for split in a:
        assert torch.equal(a[split].x, b[split].x)
        assert all(torch.equal(a[split].targets[t], b[split].targets[t]) for t in ("left", "right"))


# ------------------------------------------------------------------ full MNIST via `prepare`

def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    opener = gzip.open if gz else open
    ext = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{ext}", "wb") as f:
        f.write(struct.pack(">IIII", 2051, images.shape[0], 28, 28) + images.tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{ext}", "wb") as f:
        f.write(struct.pack(">II", 2049, labels.shape[0]) + labels.astype(np.uint8).tobytes())


def tiny_mnist(n_train: int = 120, n_test: int = 30):
    """Real digits from the embedded set, written in MNIST's own formats."""
    digits, labels = mod.load_embedded_digits()
    idx = np.random.default_rng(0).permutation(len(labels))
    tr, te = idx[:n_train], idx[n_train:n_train + n_test]
    return (digits[tr], labels[tr]), (digits[te], labels[te])


def test_prepare_from_idx_files(tmp_path):
    (trx, try_), (tex, tey) = tiny_mnist()
    src = tmp_path / "mnist"
    src.mkdir()
    write_idx(src, "train", trx, try_)
    write_idx(src, "t10k", tex, tey, gz=False)
    task = MultiMNIST(source="mnist")
    with pytest.raises(DataError, match="mtlbench prepare multimnist --source"):
        task.load(tmp_path / "data")
    path = task.prepare(src, tmp_path / "data")
    splits = MultiMNIST(source="mnist").load(tmp_path / "data")
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "val": 20, "test": 30}
    assert path == task.store_path(tmp_path / "data")
    assert task.prepare(src, tmp_path / "data") == path  # same content: nothing rebuilt


def test_prepare_from_a_huggingface_copy(tmp_path):
    import datasets

    (trx, try_), (tex, tey) = tiny_mnist()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": list(trx), "label": try_.tolist()}, features=features),
        "test": datasets.Dataset.from_dict({"image": list(tex), "label": tey.tolist()}, features=features),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    MultiMNIST().prepare(tmp_path / "hf", tmp_path / "data")
    splits = MultiMNIST(source="mnist").load(tmp_path / "data")
    assert len(splits["test"]) == 30


def test_prepare_rejects_truncated_and_missing_files(tmp_path):
    (trx, try_), (tex, tey) = tiny_mnist()
    src = tmp_path / "mnist"
    src.mkdir()
    write_idx(src, "train", trx, try_, gz=False)
    write_idx(src, "t10k", tex, tey, gz=False)
    images = src / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: holds .* bytes of data, header says .*truncated"):
        MultiMNIST().prepare(src, tmp_path / "data")
    assert not (tmp_path / "data" / "multimnist").exists() or not any((tmp_path / "data" / "multimnist").iterdir())
    images.unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        MultiMNIST().prepare(src, tmp_path / "data")
    with pytest.raises(DataError, match="no such file or folder"):
        MultiMNIST().prepare(tmp_path / "nowhere", tmp_path / "data")
