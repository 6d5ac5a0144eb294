"""What the VTAB-derived tasks share (``smallnorb``, ``clevr``: two tasks each, as the sparse-
training paper takes them from VTAB, Zhai et al. 2019): the VTAB-1k split rule and the per-batch
resize + normalisation of stored uint8 images."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.core.spec import Protocol
from mtlbench.datasets.classification import Accuracy
from mtlbench.datasets.images import IMAGENET_MEAN, IMAGENET_STD, check_image_size
from mtlbench.datasets.splits import MappedSplit, arrow_columns, open_store
from mtlbench.plugin.task import Task

VTAB_1K = (800, 200)  # VTAB-1k: 800 training and 200 validation examples from the training split
SPLIT_SEED = 0


def vtab_rows(n_train_pool: int, train_size: int) -> dict[str, np.ndarray]:
    """Rows of the official training split for ``train`` and ``val``: VTAB-1k (``train_size``
    1000: 800 / 200) or, for another size, the same 4:1 proportion; 0 keeps VTAB's full rule
    (90% / 10%). Drawn by a fixed seed (VTAB takes the first rows of TFDS's order, which this
    does not replay)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n_train_pool)
    if train_size == 0:
        n_val = n_train_pool // 10
        return {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}
    if train_size > n_train_pool:
        raise ValueError(f"train_size={train_size} exceeds the {n_train_pool} images of the training split")
    n_train = train_size * VTAB_1K[0] // sum(VTAB_1K)
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:train_size])}


class ResizeNormalize:
    """uint8 (N, C, h, w) or (N, h, w) -> float32 (N, 3, size, size): bilinear resize (as VTAB's
    ``tf.image.resize``), grey repeated to RGB, ImageNet mean/std (the ViT's pre-training)."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.float() / 255.0
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class VTABPairTask(Task):
    """Two classification tasks on one image, as VTAB defines them: the options (``image_size``,
    ``train_size``), the store of uint8 images with one label column per task, linear heads,
    cross-entropy and accuracy. A subclass sets ``tasks``, ``metrics``, ``n_classes``,
    ``contents`` (what ``prepare``'s ROOT holds) and implements ``prepare``."""

    n_classes: ClassVar[dict[str, int]] = {}
    contents: ClassVar[str] = ""
    # VTAB-1k fine-tuning: SGD with momentum, batch 64; the paper's own schedule is not printed.
    protocol = Protocol(epochs=100, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9, scheduler="cosine",
                        selection="best_val", eval_batch_size=256)  # fmt: skip

    def __init__(self, image_size: int = 224, train_size: int = 1000) -> None:
        self.image_size = check_image_size(self.name, image_size, 512)
        if not isinstance(train_size, int) or isinstance(train_size, bool) or train_size < 0:
            raise ValueError(f"task {self.name}: option train_size={train_size!r}; expected 0 (VTAB's full split) or a count")
        super().__init__(image_size=image_size, train_size=train_size)
        self.train_size = train_size
        self.input_shape = (3, image_size, image_size)

    def load(self, data_dir: Path) -> dict[str, MappedSplit]:
        path = self.store_path(data_dir)  # type: ignore[attr-defined]
        dd = open_store(path, self.prepare_command("ROOT"), self.contents)
        out = {}
        for split in ("train", "val", "test"):
            cols = arrow_columns(dd[split], ["image", *self.tasks], f"{path} [{split}]")
            transform = ResizeNormalize(self.image_size)
            out[split] = MappedSplit(cols["image"], {t: cols[t] for t in self.tasks}, transform=transform)
        return out

    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, self.n_classes[task])

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def evaluator(self, tasks: Sequence[str]) -> Accuracy:
        return Accuracy(tasks)
