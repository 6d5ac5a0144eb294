"""Image files for task stores: decoding and resizing once at ``prepare`` time, normalising per batch.

Stores keep images as uint8 (C, H, W) arrays; :class:`Normalize` turns a gathered batch into
float inputs, so a store of 200,000 images stays 4x smaller than float tensors and is read in
place (see :class:`mtlbench.datasets.splits.MappedColumn`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mtlbench.core.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim == 3:  # (N, H, W) single-channel images
            x = x.unsqueeze(1)
        return (x.float() / 255.0 - self.mean) / self.std


def check_image_size(task: str, value: object, largest: int) -> int:
    """A task's ``image_size`` option: an integer from 8 to ``largest`` (ValueError otherwise)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= largest:
        raise ValueError(f"task {task}: option image_size={value!r}; expected an integer from 8 to {largest}")
    return value


def decode_resized(paths: Sequence[Path], size: int, fix: str, workers: int | None = None) -> np.ndarray:
    """Decode image files as RGB and resize each to ``size`` x ``size`` (PIL bilinear, which
    antialiases when shrinking: what torchvision's ``Resize`` does on PIL images). Returns uint8
    (N, 3, size, size). A missing or undecodable file raises a DataError naming it and ``fix``."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def load(i: int) -> None:
        path = paths[i]
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found; {fix}") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: cannot be decoded as an image ({e}); the file is truncated or corrupt: {fix}") from None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(load, range(len(paths))))
    return out
