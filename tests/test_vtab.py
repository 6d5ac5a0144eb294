"""SmallNORB and CLEVR (ST's ViT tasks from VTAB): prepare from the official on-disk formats
(written here small: NYU's binary matrix files, CLEVR's PNGs and scene JSON), the labels by
hand, the VTAB-1k split rule, one training run through the CLI, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtlbench.cli import main
from mtlbench.core.errors import DataError
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, make_project

PLUGINS = discover(REPO)
NORB_PREFIX = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training", "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}


def write_mat(path: Path, array: np.ndarray) -> None:
    """NYU's binary matrix format: magic, ndim, max(3, ndim) dims (1-padded), little-endian data."""
    magic = 0x1E3D4C55 if array.dtype == np.uint8 else 0x1E3D4C54
    dims = list(array.shape) + [1] * (3 - array.ndim)
    path.write_bytes(np.array([magic, array.ndim, *dims], dtype="<i4").tobytes() + array.astype(array.dtype.newbyteorder("<")).tobytes())


def write_smallnorb(root: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, prefix in NORB_PREFIX.items():
        images = rng.integers(0, 256, (n, 2, 16, 16), dtype=np.uint8)
        info = np.stack([rng.integers(0, 10, n), rng.integers(0, 9, n), 2 * rng.integers(0, 18, n), rng.integers(0, 6, n)], 1)
        write_mat(root / f"{prefix}-dat.mat", images)
        write_mat(root / f"{prefix}-info.mat", info.astype(np.int32))
        write_mat(root / f"{prefix}-cat.mat", rng.integers(0, 5, n).astype(np.int32))
    return root


def write_clevr(root: Path, n_train: int = 25, n_val: int = 8, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "CLEVR_v1.0"
    for split, n in (("train", n_train), ("val", n_val)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        scenes = []
        for i in range(n):
            name = f"CLEVR_{split}_{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(base / "images" / split / name)
            k = int(rng.integers(3, 11))
            objects = [{"pixel_coords": [float(rng.integers(0, 480)), float(rng.integers(0, 320)), float(rng.uniform(7, 16))],
                        "shape": "cube"} for _ in range(k)]
            scenes.append({"image_index": i, "image_filename": name, "split": split, "objects": objects})
        (base / "scenes").mkdir(exist_ok=True)
        (base / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return root


def test_smallnorb_labels_and_splits_from_the_binary_files(tmp_path, data_dir):
    src = write_smallnorb(tmp_path / "norb")
    task = PLUGINS.tasks["smallnorb"](image_size=16, train_size=20)
    task.prepare(src, data_dir)
    splits = task.load(data_dir)
    assert {k: len(v) for k, v in splits.items()} == {"train": 16, "val": 4, "test": 15}  # 4:1, test[50%:]
    ds = __import__("datasets").load_from_disk(str(task.store_path(data_dir)))
    from tasks.smallnorb import read_mat

    info = read_mat(src / f"{NORB_PREFIX['test']}-info.mat")
    dat = read_mat(src / f"{NORB_PREFIX['test']}-dat.mat")
    rows = np.array(ds["test"]["row"])
    assert rows.tolist() == list(range(15, 30))
    assert np.array(ds["test"]["azimuth"]).tolist() == (info[rows, 2] // 2).tolist()
    assert np.array(ds["test"]["elevation"]).tolist() == info[rows, 1].tolist()
    assert np.array_equal(np.array(ds["test"]["image"], dtype=np.uint8), dat[rows, 0])  # the first image of each pair
    x, y = splits["train"].batch(np.arange(3))
    assert tuple(x.shape) == (3, 3, 16, 16) and set(y) == {"azimuth", "elevation"}


def test_clevr_labels_follow_vtab_and_images_are_resized(tmp_path, data_dir):
    from tasks.clevr import labels

    assert labels({"objects": [{"pixel_coords": [0, 0, 9.2]}, {"pixel_coords": [0, 0, 12.0]}, {"pixel_coords": [0, 0, 8.4]}]}, "x") == (0, 1)
    assert labels({"objects": [{"pixel_coords": [0, 0, 10.0]}] * 10}, "x") == (7, 5)
    assert labels({"objects": [{"pixel_coords": [0, 0, 7.9]}] * 4}, "x") == (1, 0)
    with pytest.raises(DataError, match=r"2 objects; CLEVR scenes hold 3 to 10"):
        labels({"objects": [{"pixel_coords": [0, 0, 9.0]}] * 2}, "x")
    src = write_clevr(tmp_path / "clevr")
    task = PLUGINS.tasks["clevr"](image_size=16, train_size=10)
    task.prepare(src, data_dir)
    splits = task.load(data_dir)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 2, "test": 8}
    scenes = json.loads((src / "CLEVR_v1.0" / "scenes" / "CLEVR_val_scenes.json").read_text())["scenes"]
    _, y = splits["test"].batch(np.arange(8))
    assert y["count"].tolist() == [len(s["objects"]) - 3 for s in scenes]
    assert y["distance"].tolist() == [labels(s, "x")[1] for s in scenes]


VTAB_TOML = """
[backbones.vit-s]
model = "vit_tiny_patch16_224"
kwargs = { img_size = 16, patch_size = 8, depth = 1, embed_dim = 16, num_heads = 2 }

[suites.vtab]
backbones = ["vit-s"]
methods = ["stl", "ew", "pcgrad"]
mitigations = ["none", { name = "st", options = { fraction = 0.3 } }]
seeds = [0]
conflict = { every = 1 }

[suites.vtab.tasks.clevr]
image_size = 16
train_size = 10
epochs = 1
batch_size = 4

[suites.vtab.tasks.smallnorb]
image_size = 16
train_size = 20
epochs = 1
batch_size = 4
"""


def test_both_tasks_train_with_a_vit_and_sparse_training_through_the_cli(tmp_path, data_dir):
    for name, write in (("smallnorb", write_smallnorb), ("clevr", write_clevr)):
        src = write(tmp_path / name)
        args = ["prepare", name, "--source", str(src), "--data", str(data_dir), "--option", "image_size=16"]
        args += ["--option", f"train_size={10 if name == 'clevr' else 20}"]
        assert main(args) == 0
    config = make_project(tmp_path / "p", VTAB_TOML)
    results = tmp_path / "r"
    assert main(["run", "--config", str(config), "--results", str(results), "--data", str(data_dir), "--no-progress"]) == 0
    runs = [json.loads(p.read_text()) for p in results.rglob("*.json") if ".cache" not in p.parts]
    assert len(runs) == 2 * (1 + 2 * 2)  # per task: stl, and ew / pcgrad with and without ST
    assert all(r["status"] == "ok" for r in runs), [r.get("reason") for r in runs]
    assert {tuple(sorted(r["metrics"]["test"])) for r in runs} == {("count.acc", "distance.acc"), ("azimuth.acc", "elevation.acc")}


def test_bad_sources_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"smallnorb-5x46789x9x18x6x2x96x96-training-dat\.mat: file not found"):
        PLUGINS.tasks["smallnorb"]().prepare(tmp_path, tmp_path / "d")
    src = write_smallnorb(tmp_path / "n")
    (src / f"{NORB_PREFIX['train']}-dat.mat").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)  # still gzipped
    with pytest.raises(DataError, match=r"not a SmallNORB matrix file .*gunzip it first"):
        PLUGINS.tasks["smallnorb"]().prepare(src, tmp_path / "d")
    with pytest.raises(DataError, match=r"no CLEVR release found \(expected images/ and scenes/"):
        PLUGINS.tasks["clevr"]().prepare(tmp_path, tmp_path / "d")
    with pytest.raises(ValueError, match=r"train_size=-1"):
        PLUGINS.tasks["clevr"](train_size=-1)
