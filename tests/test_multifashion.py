"""MultiFashion+MNIST from MNIST / Fashion-MNIST idx files: prepare, the overlay, the memory-mapped
store, errors, and a tiny Recon Table 1 run through the CLI up to the reproduction page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.cli import main
from mtlbench.datasets.splits import STORE_MARKER
from mtlbench.core.errors import DataError
from mtlbench.grid.plugins import discover
from tests.conftest import REPO, make_project
from tests.test_multimnist import tiny_mnist, write_idx

MultiFashion = discover(REPO).tasks["multifashion"]
mod = __import__(MultiFashion.__module__, fromlist=["x"])


def fashion_items(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-like 28x28 items: a bar whose width and position encode the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for k, c in enumerate(labels):
        images[k, 4:24, 2 + c:6 + 2 * c] = 220
    return images, labels


def write_sources(root: Path) -> dict:
    """torchvision's download layout: ROOT/MNIST/raw/*.gz and ROOT/FashionMNIST/raw/*.gz."""
    (mtr, mtr_y), (mte, mte_y) = tiny_mnist(96, 24)
    (ftr, ftr_y), (fte, fte_y) = fashion_items(90, 1), fashion_items(30, 2)
    for folder, (trx, try_), (tex, tey) in (("MNIST", (mtr, mtr_y), (mte, mte_y)), ("FashionMNIST", (ftr, ftr_y), (fte, fte_y))):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        write_idx(raw, "train", trx, try_)
        write_idx(raw, "t10k", tex, tey)
    return {"mnist": (mtr, mtr_y, mte, mte_y), "fashion": (ftr, ftr_y, fte, fte_y)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("multifashion")
    sources = write_sources(root / "src")
    data = root / "data"
    path = MultiFashion().prepare(root / "src", data)
    return root, sources, data, path


def test_store_is_memory_mapped_and_sized_as_two_images_per_item(prepared):
    _, _, data, path = prepared
    assert (path / STORE_MARKER).exists() and (path / "dataset_dict.json").exists()
    splits = MultiFashion().load(data)
    # pools: train 5/6 of the training items (80 MNIST / 75 Fashion), val 1/6, test all; 2 images per item of the larger pool
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "val": 32, "test": 60}
    x, y = splits["train"].batch(torch.arange(5))
    assert x.shape == (5, 1, 36, 36) and x.dtype == torch.float32
    assert y["left"].dtype == torch.int64 and set(y) == {"left", "right"}
    meta = json.loads((path / "meta.json").read_text())
    assert 0 < meta["mean"] < 1 and 0 < meta["std"] < 1
    train = torch.cat([b[0] for b in splits["train"].batches(64)])  # normalised with the training pixels' statistics
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-3


def test_images_overlay_an_mnist_digit_and_a_fashion_item(prepared):
    import datasets

    _, sources, _, path = prepared
    test = datasets.load_from_disk(str(path))["test"].with_format("numpy")[:]
    mte, mte_y, fte, fte_y = sources["mnist"][2:] + sources["fashion"][2:]
    for img, left, right, i, j in zip(test["image"], test["left"], test["right"], test["left_src"], test["right_src"]):
        assert mte_y[i] == left and fte_y[j] == right
        assert np.array_equal(img, mod.overlay(mte[i][None], fte[j][None])[0])
    assert np.bincount(test["right_src"], minlength=30).tolist() == [2] * 30  # every Fashion item in two images


def test_prepare_again_rebuilds_nothing_and_a_variant_has_its_own_store(prepared):
    root, _, data, path = prepared
    stamp = (path / STORE_MARKER).stat().st_mtime_ns
    assert MultiFashion().prepare(root / "src", data) == path
    assert (path / STORE_MARKER).stat().st_mtime_ns == stamp
    two = MultiFashion(variant="fashion")
    two_path = two.prepare(root / "src", data)
    assert two_path != path
    import datasets

    train = datasets.load_from_disk(str(two_path))["train"].with_format("numpy")[:]
    assert not np.any(train["left_src"] == train["right_src"])  # never an item over itself


def test_missing_and_truncated_sources_are_named(tmp_path):
    src = tmp_path / "src"
    write_sources(src)
    images = src / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    import gzip

    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[:-500]))
    with pytest.raises(DataError, match=r"FashionMNIST/raw/train-images-idx3-ubyte.gz: holds \d+ bytes of data, header says"):
        MultiFashion().prepare(src, tmp_path / "data")
    assert not (tmp_path / "data" / "multifashion").exists() or not any((tmp_path / "data" / "multifashion").iterdir())
    import shutil

    shutil.rmtree(src / "FashionMNIST")
    with pytest.raises(DataError, match=r"no Fashion-MNIST folder; expected one of FashionMNIST/.*mtlbench prepare multifashion"):
        MultiFashion().prepare(src, tmp_path / "data")
    with pytest.raises(DataError, match=r"store not found.*mtlbench prepare multifashion --source ROOT --option variant=fashion"):
        MultiFashion(variant="fashion").load(tmp_path / "data")
    with pytest.raises(ValueError, match="variant='mnist'"):
        MultiFashion(variant="mnist")


TABLE1_TOML = """
[backbones.resnet18-recon]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.recon-multifashion]
backbones = ["resnet18-recon"]
methods = ["stl", "ew", "pcgrad"]
seeds = [0]
conflict = { every = 2 }

[suites.recon-multifashion.tasks.multifashion]
epochs = 2
batch_size = 32
lr = 0.05
"""


def test_recon_table1_setting_runs_and_the_reproduction_page_shows_it(prepared, tmp_path, monkeypatch):
    _, _, data, _ = prepared
    config = make_project(tmp_path / "proj", TABLE1_TOML)
    results = tmp_path / "results"
    assert main(["run", "--config", str(config), "--results", str(results), "--data", str(data), "--no-progress"]) == 0
    ew = json.loads((results / "recon-multifashion" / "multifashion" / "resnet18-recon" / "ew__none__seed0.json").read_text())
    assert ew["selection"]["per_model"]["joint"]["rule"] == "last_mean"  # Recon reports the last epoch
    assert ew["cell"]["protocol"]["momentum"] == 0.9 and ew["conflict"]["n_samples"] == 5

    out = tmp_path / "site"
    assert main(["leaderboard", "--results", str(results), "--out", str(out),
                 "--published", str(REPO / "leaderboard" / "published")]) == 0
    index = (out / "index.html").read_text()
    assert 'href="reproduction.html"' in index
    page = (out / "reproduction.html").read_text()
    assert "Multi-Fashion+MNIST" in page and "<td>98.37<br>" in page  # Recon's single-task T1 accuracy
    import pandas as pd

    view = pd.read_csv(out / "reproduction.csv")
    mine = view[(view["table"] == "shi2023-recon-table1-multifashion") & (view["ours_method"] == "ew")
                & (view["ours_mitigation"] == "none")].set_index("metric")
    assert mine.loc["T1 Acc", "ours"] == pytest.approx(100 * ew["metrics"]["test"]["left.acc"])
    assert mine.loc["T1 Acc", "difference"] == pytest.approx(mine.loc["T1 Acc", "ours"] - 97.42)
    assert not np.isnan(mine.loc["Δm % (task, ↑)", "ours"])
    assert view[(view["table"] == "shi2023-recon-table1-multifashion") & (view["method"] == "RotoGrad")]["ours"].isna().all()
