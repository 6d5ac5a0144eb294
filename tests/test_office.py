"""Office-31 / Office-Home: multi-input tasks (each domain has its own images). Prepare from image
folders and LibMTL's split lists, the multi-input batches, training with one batch per domain
through the shared trunk, per-domain evaluation, and bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.api import MultiInputSplit, Split
from mtlbench.datasets.classification import Accuracy
from mtlbench.grid.config import load_benchmark
from mtlbench.core.errors import DataError
from mtlbench.grid.plugins import discover
from mtlbench.train.cell import train_cell
from tests.conftest import REPO, make_project
from tests.image_datasets import write_office

PLUGINS = discover(REPO)
Office31, OfficeHome = PLUGINS.tasks["office31"], PLUGINS.tasks["officehome"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("office")
    listed = write_office(root / "src", "office-31", Office31.domains, 31)
    Office31(image_size=16).prepare(root / "src", root / "data")
    return root, listed


def test_one_store_per_domain_with_the_listed_images_and_labels(prepared):
    root, listed = prepared
    splits = Office31(image_size=16).load(root / "data")
    assert all(isinstance(s, MultiInputSplit) for s in splits.values())
    assert set(splits["train"].parts) == {"amazon", "dslr", "webcam"}
    for domain in Office31.tasks:
        for split in ("train", "val", "test"):
            part = splits[split].parts[domain]
            x, y = part.batch(torch.arange(len(part)))
            assert x.shape == (len(listed[domain][split]), 3, 16, 16)
            assert y[domain].tolist() == [label for _, label in listed[domain][split]]
    meta = json.loads((Office31(image_size=16).store_path(root / "data") / "meta.json").read_text())
    assert meta["images"]["dslr.val"] == 6


def test_training_batches_draw_every_domain_and_evaluation_visits_each_image_once():
    parts = {t: Split(torch.arange(n).float().view(n, 1) + 100 * k, {t: torch.arange(n)})
             for k, (t, n) in enumerate({"a": 10, "b": 4}.items())}
    split = MultiInputSplit(parts)
    assert len(split) == 10
    steps = list(split.batches(3, generator=torch.Generator().manual_seed(0), drop_last=True))
    assert len(steps) == 3  # the largest domain fills 3 batches of 3
    for x, y in steps:
        assert set(x) == set(y) == {"a", "b"} and all(v.shape[0] == 3 for v in y.values())
    seen_a = torch.cat([y["a"] for _, y in steps])
    assert len(set(seen_a.tolist())) == 9  # one pass without repeats
    seen_b = torch.cat([y["b"] for _, y in steps])  # 4 images: restarts, reshuffled, after each full batch
    assert set(seen_b.tolist()) <= {0, 1, 2, 3}
    evaluation = list(split.batches(4))
    assert [list(x) for x, _ in evaluation] == [["a"], ["a"], ["a"], ["b"]]
    assert torch.cat([y["a"] for _, y in evaluation[:3]]).tolist() == list(range(10))
    with pytest.raises(ValueError, match=r"batch_size 5 exceeds the training samples of sub-tasks \{'b': 4\}"):
        next(split.batches(5, generator=torch.Generator(), drop_last=True))
    assert list(split.for_tasks(["b"]).parts) == ["b"]


def test_accuracy_counts_each_domain_separately():
    ev = Accuracy(["a", "b"])
    ev.update({"a": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}, {"a": torch.tensor([1, 1])})
    ev.update({"b": torch.tensor([[0.0, 1.0]] * 3)}, {"b": torch.tensor([1, 1, 0])})
    assert ev.compute() == {"a.acc": 0.5, "b.acc": pytest.approx(2 / 3)}


OFFICE_TOML = """
[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.office]
backbones = ["r8"]
methods = ["stl", "ew", "mgda"]
seeds = [0]
conflict = { every = 2 }

[suites.office.tasks.office31]
image_size = 16
epochs = 3
batch_size = 4
lr = 0.01
"""


@pytest.fixture(scope="module")
def office_results(prepared, tmp_path_factory):
    root, _ = prepared
    bench = load_benchmark(make_project(tmp_path_factory.mktemp("office-proj") / "proj", OFFICE_TOML))
    return {c.method: train_cell(c, bench.plugins, data_dir=root / "data", device=torch.device("cpu"), progress=False).to_json()
            for c in bench.cells()}


def test_multi_input_training_one_batch_per_domain_per_step(office_results):
    ew = office_results["ew"]
    assert set(ew["metrics"]["test"]) == {"amazon.acc", "dslr.acc", "webcam.acc"}
    assert ew["cost"]["train_steps"] == 3 * 4  # 16 training images per domain, batch 4, 3 epochs
    assert ew["conflict"]["n_samples"] == 6 and len(ew["conflict"]["histogram"]["counts"]) > 0
    curves = ew["curves"]["joint"]
    assert set(curves[0]["train_loss"]) == {"amazon", "dslr", "webcam"}
    assert sum(curves[-1]["train_loss"].values()) < sum(curves[0]["train_loss"].values())  # it learns
    stl = office_results["stl"]
    assert set(stl["curves"]) == {"amazon", "dslr", "webcam"}  # one model per domain, on its own images
    assert stl["cost"]["train_steps"] == 3 * 3 * 4
    assert office_results["mgda"]["metrics"]["val"].keys() == ew["metrics"]["val"].keys()


def test_bad_split_lists_and_images_are_named(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    write_office(src, "office-home", OfficeHome.domains, 65, sizes=(2, 1, 1))
    lists = src / "data_txt" / "office-home"
    lines = (lists / "Clipart_val.txt").read_text()
    (lists / "Clipart_val.txt").write_text(lines + "Clipart/images/class_00/extra.jpg 70\n")
    with pytest.raises(DataError, match=r"Clipart_val\.txt:2: label 70, expected 0 to 64"):
        OfficeHome(image_size=8).prepare(src, data)
    (lists / "Clipart_val.txt").write_text(lines + "Clipart/images/class_00/extra.jpg 3\n")
    with pytest.raises(DataError, match=r"extra\.jpg: image file not found \(1 of 2 images of Clipart_val\.txt are missing\)"):
        OfficeHome(image_size=8).prepare(src, data)
    (lists / "Clipart_val.txt").unlink()
    with pytest.raises(DataError, match=r"split list Clipart_val\.txt not found .*LibMTL's examples/office/data_txt/office-home/"):
        OfficeHome(image_size=8).prepare(src, data)
    assert not (data / "officehome").exists() or not any((data / "officehome").iterdir())
    with pytest.raises(DataError, match=r"store not found.*mtlbench prepare officehome --source ROOT --option image_size=8"):
        OfficeHome(image_size=8).load(data)


def test_a_task_that_breaks_its_multi_input_declaration_is_refused():
    from mtlbench.train.cell import check_inputs

    parts = {"amazon": Split(torch.zeros(2, 1), {"amazon": torch.zeros(2, dtype=torch.long)})}
    check_inputs(Office31(), {"train": MultiInputSplit(parts)})
    with pytest.raises(TypeError, match=r"task 'office31' \(multi_input=True\) returned a Split for split 'train'"):
        check_inputs(Office31(), {"train": parts["amazon"]})
    assert np.array_equal(Office31.tasks, ("amazon", "dslr", "webcam")) and OfficeHome.tasks[-1] == "real_world"
