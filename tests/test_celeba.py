"""CelebA: prepare from the official files (JPEGs, attribute and partition lists) in both common
layouts, the memory-mapped store, error and F1 by hand, bad source files, one training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.datasets.classification import AttributeErrorF1
from mtlbench.grid.config import load_benchmark
from mtlbench.datasets.splits import STORE_MARKER
from mtlbench.core.errors import DataError
from mtlbench.grid.plugins import discover
from mtlbench.train.cell import train_cell
from tests.conftest import REPO, make_project
from tests.image_datasets import CELEBA_PARTITION, write_celeba

CelebA = discover(REPO).tasks["celeba"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    attrs = write_celeba(root / "src", CelebA.tasks)
    path = CelebA(image_size=16).prepare(root / "src", root / "data")
    return root, attrs, path


def test_official_partition_attributes_and_image_shapes(prepared):
    root, attrs, path = prepared
    splits = CelebA(image_size=16).load(root / "data")
    assert tuple(len(splits[s]) for s in ("train", "val", "test")) == CELEBA_PARTITION
    x, y = splits["val"].batch(torch.arange(6))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert set(y) == set(CelebA.tasks) and all(v.dtype == torch.int64 for v in y.values())
    val_rows = np.arange(12, 18)  # the partition file lists images 13-18 as validation, in order
    for k, attr in enumerate(CelebA.tasks):
        assert y[attr].tolist() == attrs[val_rows, k].tolist()
    import datasets

    train = datasets.load_from_disk(str(path))["train"]
    files = train["file"]
    assert sorted(files) == [f"{i:06d}.jpg" for i in range(1, 13)] and files != sorted(files)  # shuffled once
    assert json.loads((path / "meta.json").read_text())["images"] == dict(zip(("train", "val", "test"), CELEBA_PARTITION))


def test_torchvision_layout_gives_the_same_store(prepared, tmp_path):
    root, _, path = prepared
    write_celeba(tmp_path / "src", CelebA.tasks, layout="torchvision")
    other = CelebA(image_size=16).prepare(tmp_path / "src", tmp_path / "data")
    import datasets

    a, b = datasets.load_from_disk(str(path)), datasets.load_from_disk(str(other))
    for split in ("train", "val", "test"):
        assert np.array_equal(a[split].with_format("numpy")[:]["image"], b[split].with_format("numpy")[:]["image"])


def test_error_and_f1_by_hand():
    ev = AttributeErrorF1(["a", "b"])
    logits = lambda pred: torch.stack([1 - torch.tensor(pred, dtype=torch.float), torch.tensor(pred, dtype=torch.float)], 1)  # noqa: E731
    ev.update({"a": logits([1, 1, 0, 0]), "b": logits([0, 0, 0, 0])}, {"a": torch.tensor([1, 0, 1, 0]), "b": torch.tensor([0, 0, 0, 0])})
    ev.update({"a": logits([1])}, {"a": torch.tensor([1])})  # a batch with one sub-task only
    out = ev.compute()
    # a: tp=2 fp=1 fn=1 of 5 -> error 2/5, F1 = 4/6 ; b: no positives, none predicted -> error 0, F1 0
    assert out["a.err"] == pytest.approx(0.4) and out["a.f1"] == pytest.approx(4 / 6)
    assert out["b.err"] == 0.0 and out["b.f1"] == 0.0


def test_bad_sources_name_the_file_and_leave_no_store(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    write_celeba(src, CelebA.tasks)
    image = src / "Img" / "img_align_celeba" / "000005.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"000005\.jpg: cannot be decoded as an image .*truncated or corrupt.*mtlbench prepare celeba"):
        CelebA(image_size=16).prepare(src, data)
    assert not (data / "celeba").exists() or not any(p.name.startswith("v1") for p in (data / "celeba").iterdir())
    image.unlink()
    with pytest.raises(DataError, match=r"000005\.jpg: image file not found \(1 of 24 listed images are missing\)"):
        CelebA(image_size=16).prepare(src, data)
    attr = src / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt: 21 image rows, header says 24; the file is truncated"):
        CelebA(image_size=16).prepare(src, data)
    attr.write_text("\n".join([lines[0], lines[1].replace("Young", "Old")] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt: second line names 40 attributes, expected CelebA's 40"):
        CelebA(image_size=16).prepare(src, data)
    (src / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match=r"list_eval_partition\.txt not found \(looked for .*Eval/list_eval_partition\.txt"):
        CelebA(image_size=16).prepare(src, data)
    with pytest.raises(DataError, match=r"store not found.*mtlbench prepare celeba --source PATH --option image_size=16"):
        CelebA(image_size=16).load(data)


CELEBA_TOML = """
[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.celeba]
backbones = ["r8"]
methods = ["ew", "pcgrad"]
seeds = [0]
conflict = { every = 1, histogram = "0.02" }

[suites.celeba.tasks.celeba]
image_size = 16
epochs = 1
batch_size = 4
"""


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_one_training_run_reports_error_and_f1_for_40_tasks(prepared, tmp_path, method):
    root, _, _ = prepared
    bench = load_benchmark(make_project(tmp_path / "proj", CELEBA_TOML))
    cell = next(c for c in bench.cells() if c.method == method)
    result = train_cell(cell, bench.plugins, data_dir=root / "data", device=torch.device("cpu"), progress=False).to_json()
    test = result["metrics"]["test"]
    assert len(test) == 80 and all(0.0 <= v <= 1.0 for v in test.values())
    assert result["metric_info"]["Smiling.err"] == {"task": "Smiling", "higher_is_better": False, "label": "Smiling error"}
    assert result["conflict"]["n_samples"] == 3 and result["cost"]["train_steps"] == 3  # 12 images, batch 4
    assert len(result["conflict"]["histogram"]["counts"]) > 2
