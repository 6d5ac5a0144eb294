"""Office-31 and Office-Home: object classification in several visual domains, one task per
domain. A multi-input task: every domain has its own images, and a training step draws one
batch per domain through the shared trunk (:class:`mtlbench.datasets.splits.MultiInputSplit`).

Datasets: Office-31 (Saenko, Kulis, Fritz & Darrell, ECCV 2010; domains amazon, dslr, webcam;
31 classes; 4,110 images) and Office-Home (Venkateswara, Eusebio, Chakraborty & Panchanathan,
CVPR 2017; domains Art, Clipart, Product, Real_World; 65 classes; 15,588 images). As MTL
benchmarks they follow LibMTL (Lin & Zhang, JMLR 2023; ``examples/office``), whose split lists
``<domain>_{train,val,test}.txt`` (60/20/20 per domain; lines ``<path relative to the dataset
root> <label>``) are the on-disk format read here.

``mtlbench prepare office31 --source ROOT`` (likewise ``officehome``): ROOT is the folder the
list paths are relative to (LibMTL's ``dataset_path``, e.g. holding ``amazon/images/...``); the
lists are found in ROOT, ``ROOT/data_txt/office-31`` (``office-home``), ``ROOT/office-31`` or
``ROOT/data_txt``. Images are resized to ``image_size`` x ``image_size`` (224, as LibMTL's
``Resize((224, 224))``), stored as uint8 and normalised per batch with the ImageNet mean and std.

Protocol (LibMTL's defaults for these examples): ImageNet-pretrained ResNet18, Adam 1e-4 with
weight decay 1e-5, batch 64 per domain, 100 epochs, no schedule; the checkpoint is the best
validation epoch. LibMTL's shared encoder adds a 512-unit hidden layer (linear, batch norm,
ReLU, dropout 0.5) after the pooled ResNet features; here the trunk is the backbone's pooled
features and each domain's head is one linear layer. Metric: accuracy per domain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.api import MappedSplit, MetricSpec, MultiInputSplit, Protocol, Task, arrow_columns
from mtlbench.core.errors import DataError
from mtlbench.datasets.classification import Accuracy
from mtlbench.datasets.images import IMAGENET_MEAN, IMAGENET_STD, Normalize, check_image_size, decode_resized
from mtlbench.datasets.splits import build_store_for, content_hash, open_store

SPLITS = ("train", "val", "test")


def read_split_list(path: Path, n_classes: int) -> tuple[list[str], np.ndarray]:
    """``<relative path> <label>`` lines -> (paths, int64 labels)."""
    paths, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: {line!r}, expected '<image path> <label>'")
        label = int(fields[1])
        if not 0 <= label < n_classes:
            raise DataError(f"{path}:{number}: label {label}, expected 0 to {n_classes - 1}")
        paths.append(fields[0])
        labels.append(label)
    if not paths:
        raise DataError(f"{path}: no images listed")
    return paths, np.asarray(labels, dtype=np.int64)


class _OfficeTask(Task):
    """Shared by Office-31 and Office-Home (not a task itself: it has no ``name``)."""

    dataset: ClassVar[str]
    domains: ClassVar[Mapping[str, str]]  # task name -> list/folder name
    n_classes: ClassVar[int]
    multi_input = True
    protocol = Protocol(epochs=100, batch_size=64, optimizer="adam", lr=1e-4, weight_decay=1e-5, selection="best_val")

    def __init__(self, image_size: int = 224) -> None:
        self.image_size = check_image_size(self.name, image_size, 512)
        super().__init__(image_size=image_size)
        self.input_shape = (3, image_size, image_size)

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"v{self.version}-{self.image_size}px"

    def load(self, data_dir: Path) -> dict[str, MultiInputSplit]:
        path = self.store_path(data_dir)
        contents = f"ROOT holding the images and the {self.dataset} split lists <domain>_{{train,val,test}}.txt"
        normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        parts: dict[str, dict[str, MappedSplit]] = {s: {} for s in SPLITS}
        for task in self.tasks:
            dd = open_store(path, self.prepare_command("ROOT"), contents, part=task)
            for split in SPLITS:
                cols = arrow_columns(dd[split], ["image", "label"], f"{path / task} [{split}]")
                parts[split][task] = MappedSplit(cols["image"], {task: cols["label"]}, transform=normalize)
        return {split: MultiInputSplit(parts[split]) for split in SPLITS}

    def find_list(self, source: Path, domain: str, split: str) -> Path:
        name = f"{self.domains[domain]}_{split}.txt"
        folders = (source, source / "data_txt" / self.dataset, source / self.dataset, source / "data_txt")
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise DataError(
            f"{source}: split list {name} not found (looked in {', '.join(str(f) for f in folders)}); "
            f"LibMTL's examples/office/data_txt/{self.dataset}/ holds them"
        )

    def prepare(self, source: Path, data_dir: Path) -> Path:
        """Build the store from the images under ``source`` and the split lists."""
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: no such folder; pass the {self.dataset} root the split lists' paths are relative to")
        fix = f"check that ROOT is the folder the list paths are relative to, then run `{self.prepare_command('ROOT')}`"
        lists = {(d, s): self.find_list(source, d, s) for d in self.tasks for s in SPLITS}
        entries = {key: read_split_list(path, self.n_classes) for key, path in lists.items()}
        for (domain, split), (paths, _) in entries.items():
            missing = [p for p in paths if not (source / p).is_file()]
            if missing:
                raise DataError(
                    f"{source / missing[0]}: image file not found ({len(missing)} of {len(paths)} images of "
                    f"{lists[domain, split].name} are missing); {fix}"
                )
        content = content_hash([*lists.values(), *(source / p for paths, _ in entries.values() for p in paths)], source)

        def build(out: Path) -> None:
            import datasets

            features = datasets.Features(
                {
                    "image": datasets.Array3D(self.input_shape, "uint8"),
                    "label": datasets.Value("int64"),
                    "file": datasets.Value("string"),
                }
            )
            sizes = {}
            for domain in self.tasks:
                dd = {}
                for split in SPLITS:
                    paths, labels = entries[domain, split]
                    images = decode_resized([source / p for p in paths], self.image_size, fix)
                    dd[split] = datasets.Dataset.from_dict({"image": images, "label": labels, "file": paths}, features=features)
                    sizes[f"{domain}.{split}"] = len(paths)
                datasets.DatasetDict(dd).save_to_disk(str(out / domain))
            (out / "meta.json").write_text(
                json.dumps(
                    {
                        "task": self.name,
                        "version": self.version,
                        "source": str(source.resolve()),
                        "image_size": self.image_size,
                        "images": sizes,
                    },
                    indent=1,
                )
            )

        return build_store_for(self.store_path(data_dir), content, build)

    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, self.n_classes)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluator(self, tasks: Sequence[str]) -> Accuracy:
        return Accuracy(tasks)


def _accuracy_metrics(domains: Sequence[str]) -> tuple[MetricSpec, ...]:
    return tuple(MetricSpec(f"{d}.acc", d, True, f"{d} accuracy") for d in domains)


class Office31(_OfficeTask):
    name = "office31"
    version = "1"
    description = "Office-31: 31-way object classification in 3 domains (amazon, dslr, webcam), one task per domain, multi-input"
    citation = (
        "Saenko, Kulis, Fritz & Darrell, Adapting Visual Category Models to New Domains, ECCV 2010; "
        "splits and protocol of LibMTL (Lin & Zhang, JMLR 2023)"
    )
    dataset = "office-31"
    domains = {"amazon": "amazon", "dslr": "dslr", "webcam": "webcam"}
    n_classes = 31
    tasks = tuple(domains)
    metrics = _accuracy_metrics(tasks)
    main_metrics = {d: f"{d}.acc" for d in tasks}


class OfficeHome(_OfficeTask):
    name = "officehome"
    version = "1"
    description = (
        "Office-Home: 65-way object classification in 4 domains (art, clipart, product, real_world), "
        "one task per domain, multi-input"
    )
    citation = (
        "Venkateswara, Eusebio, Chakraborty & Panchanathan, Deep Hashing Network for Unsupervised Domain "
        "Adaptation, CVPR 2017; splits and protocol of LibMTL (Lin & Zhang, JMLR 2023)"
    )
    dataset = "office-home"
    domains = {"art": "Art", "clipart": "Clipart", "product": "Product", "real_world": "Real_World"}
    n_classes = 65
    tasks = tuple(domains)
    metrics = _accuracy_metrics(tasks)
    main_metrics = {d: f"{d}.acc" for d in tasks}
