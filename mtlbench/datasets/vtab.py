"""What the VTAB-derived tasks share (``smallnorb``, ``clevr``: two tasks each, as the sparse-
training paper takes them from VTAB, Zhai et al. 2019): the VTAB-1k split rule and the per-batch
resize + normalisation of stored uint8 images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench.datasets.images import IMAGENET_MEAN, IMAGENET_STD

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
