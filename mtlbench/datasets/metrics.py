"""Metric functions shared by tasks: plain functions on tensors, computed as the literature does.

Dense prediction (MTAN, Liu et al. CVPR 2019; the evaluation code of CAGrad, Nash-MTL, FAMO and
Recon, which share MTAN's ``ConfMatrix``, ``depth_error`` and ``normal_error``):

- segmentation: one confusion matrix over the whole split; target pixels outside ``[0, C)``
  (MTAN's ``-1``) are ignored. mIoU = mean over classes of TP / (TP + FP + FN); pixel accuracy
  = trace / total. Higher is better for both.
- depth: a pixel is valid where the target is non-zero (summed over its channel); absolute
  error |d̂ − d| and relative error |d̂ − d| / d, averaged over the valid pixels of an image.
  Lower is better.
- surface normals: a pixel is valid where the target vector is non-zero; the error is the angle
  arccos(clamp(<n̂, n>, −1, 1)) in degrees; per image its mean, its median (NumPy's: the mean of
  the two middle values for an even count) and the share of valid pixels within 11.25°, 22.5°
  and 30°. Lower is better for mean/median, higher for the shares.

Functions here return per-image values; :class:`mtlbench.datasets.dense.DenseEvaluator` averages them
over the images of a split. The module stays a flat collection of functions so every task can
import what it needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


# ---------------------------------------------------------------- segmentation


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int) -> Tensor:
    """(C, C) int64 counts, rows = target class, columns = predicted class.

    ``pred`` and ``target`` hold class indices of the same shape; target values outside
    ``[0, n_classes)`` (the ignore label, e.g. -1) are left out.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target >= 0) & (target < n_classes)
    index = n_classes * target[keep] + pred[keep]
    return torch.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_iou(conf: Tensor) -> float:
    """Mean over classes of TP / (TP + FP + FN) from a confusion matrix.

    Classes that occur neither in the targets nor in the predictions (0 / 0) are left out of
    the mean; MTAN's code would return NaN there. On a real split every class occurs, so the
    two agree.
    """
    h = conf.double()
    tp = torch.diag(h)
    union = h.sum(0) + h.sum(1) - tp
    present = union > 0
    if not bool(present.any()):
        return math.nan
    return float((tp[present] / union[present]).mean())


def pixel_accuracy(conf: Tensor) -> float:
    """Share of (non-ignored) pixels whose predicted class is right."""
    total = float(conf.sum())
    return float(torch.diag(conf).sum()) / total if total > 0 else math.nan


# ---------------------------------------------------------------- depth


def valid_mask(target: Tensor) -> Tensor:
    """(N, H, W) bool: pixels whose target, summed over the channel axis, is non-zero."""
    return target.sum(dim=1) != 0


def depth_errors(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: mean absolute error, mean relative error and the number of valid pixels.

    ``pred`` and ``target`` are (N, 1, H, W). Images without a valid pixel get NaN errors and a
    count of 0.
    """
    abs_sum, rel_sum, count = depth_sums(pred, target)
    denom = count.double()
    return abs_sum / denom, rel_sum / denom, count


def depth_sums(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: the sums of absolute and relative errors over the valid pixels, and their count
    (what pooling over several images adds up)."""
    mask = valid_mask(target)
    pred, target = pred[:, 0].double(), target[:, 0].double()
    count = mask.sum(dim=(1, 2))
    abs_err = torch.where(mask, (pred - target).abs(), torch.zeros_like(pred))
    rel_err = torch.where(
        mask, (pred - target).abs() / torch.where(mask, target.abs(), torch.ones_like(target)), torch.zeros_like(pred)
    )
    return abs_err.sum(dim=(1, 2)), rel_err.sum(dim=(1, 2)), count


# ---------------------------------------------------------------- surface normals


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """(N, H, W) angle in degrees between predicted and target normals; NaN at invalid pixels.

    ``pred`` and ``target`` are (N, 3, H, W); the cosine is clamped to [-1, 1] as in MTAN.
    """
    cos = (pred.double() * target.double()).sum(dim=1).clamp(-1.0, 1.0)
    angle = torch.rad2deg(torch.acos(cos))
    return torch.where(valid_mask(target), angle, torch.full_like(angle, math.nan))


def angle_statistics(angles: Tensor, thresholds: tuple[float, ...] = NORMAL_THRESHOLDS) -> dict[str, Tensor]:
    """Per image (rows of ``angles``, NaN = invalid pixel): mean, median and the share within
    each threshold, over the valid pixels. Images without a valid pixel get NaN."""
    flat = angles.reshape(angles.shape[0], -1)
    valid = ~torch.isnan(flat)
    count = valid.sum(dim=1).double()
    filled = torch.where(valid, flat, torch.zeros_like(flat))
    out = {"mean": filled.sum(dim=1) / count, "median": _row_medians(flat)}
    for t in thresholds:
        out[f"within_{t:g}"] = ((flat < t) & valid).sum(dim=1).double() / count
    return out


def _row_medians(rows: Tensor) -> Tensor:
    """NaN-ignoring median of each row, NumPy's definition; in chunks under torch's size limit
    for quantiles (2**24 elements)."""
    per_chunk = max(1, (1 << 24) // max(rows.shape[1], 1))
    return (
        torch.cat(
            [
                torch.nanquantile(rows[i : i + per_chunk], 0.5, dim=1, interpolation="linear")
                for i in range(0, rows.shape[0], per_chunk)
            ]
        )
        if rows.shape[0]
        else rows.new_zeros(0)
    )
