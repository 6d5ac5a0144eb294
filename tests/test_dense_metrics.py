"""Dense metrics and losses against values computed by hand on small arrays (ignore labels,
invalid depth and normal pixels included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlbench.datasets import metrics as M
from mtlbench.datasets.dense import DenseEvaluator, depth_loss, normal_loss, segmentation_loss

TARGET = torch.tensor([[[0, 0, 1], [1, 2, -1]]])  # (1, 2, 3); -1 = ignore
PRED = torch.tensor([[[0, 1, 1], [1, 0, 2]]])  # the ignored pixel is predicted as 2


def one_hot_logits(pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(pred, n_classes).permute(0, 3, 1, 2).float()


def test_confusion_matrix_leaves_out_ignored_pixels():
    conf = M.confusion_matrix(PRED, TARGET, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows: target, columns: prediction


def test_miou_and_pixel_accuracy_by_hand():
    conf = M.confusion_matrix(PRED, TARGET, 3)
    # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 2 / (2 + 3 - 2), class 2 = 0 / (1 + 0 - 0)
    assert M.mean_iou(conf) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert M.pixel_accuracy(conf) == pytest.approx(3 / 5)


def test_classes_absent_from_targets_and_predictions_are_left_out_of_the_mean():
    conf = M.confusion_matrix(PRED, TARGET, 5)
    assert M.mean_iou(conf) == pytest.approx(1 / 3)
    assert math.isnan(M.mean_iou(torch.zeros(3, 3, dtype=torch.int64)))


def test_miou_comes_from_one_confusion_matrix_over_the_whole_split():
    # image 1: class 0 right everywhere; image 2: class 1 predicted as 0 everywhere
    t1, p1 = torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long)
    t2, p2 = torch.ones(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long)
    ev = DenseEvaluator(["segmentation"], n_classes=2)
    ev.update({"segmentation": one_hot_logits(p1, 2)}, {"segmentation": t1})
    ev.update({"segmentation": one_hot_logits(p2, 2)}, {"segmentation": t2})
    out = ev.compute()
    # whole split: class 0 IoU = 4 / 8, class 1 IoU = 0 -> 0.25 (per-batch means would give (1 + 0) / 2)
    assert out["segmentation.miou"] == pytest.approx(0.25)
    assert out["segmentation.pixacc"] == pytest.approx(0.5)


def test_depth_errors_over_valid_pixels_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [3.0, 8.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # 0 = no measurement
    abs_err, rel_err, count = M.depth_errors(pred, target)
    assert abs_err[0].item() == pytest.approx((1 + 0 + 4) / 3)
    assert rel_err[0].item() == pytest.approx((1 / 2 + 0 + 4 / 8) / 3)
    assert count.tolist() == [3, 0] and math.isnan(abs_err[1].item())


def test_depth_metrics_average_per_image_and_skip_images_without_valid_pixels():
    ev = DenseEvaluator(["depth"], n_classes=1)
    pred_a, target_a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[[2.0, 0.0], [3.0, 8.0]]]])
    pred_b, target_b = torch.tensor([[[[1.0, 9.0], [9.0, 9.0]]]]), torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])
    empty = torch.zeros(1, 1, 2, 2)
    ev.update({"depth": torch.cat([pred_a, pred_b])}, {"depth": torch.cat([target_a, target_b])})
    ev.update({"depth": empty + 1}, {"depth": empty})
    out = ev.compute()
    assert out["depth.abs_err"] == pytest.approx((5 / 3 + 1) / 2)  # pixel-pooled would be (5 + 1) / 4
    assert out["depth.rel_err"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def unit_normals(angles_deg: list[float]) -> torch.Tensor:
    """(1, 3, 1, n) predictions at the given angles from the target normal (0, 0, 1)."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    return torch.stack([torch.sin(a), torch.zeros_like(a), torch.cos(a)])[None, :, None, :]


def test_normal_angle_statistics_by_hand():
    pred = unit_normals([0.0, 10.0, 20.0, 45.0, 90.0, 33.0])
    target = torch.zeros_like(pred)
    target[:, 2, :, :5] = 1.0  # the last pixel has no measurement
    angles = M.normal_angles(pred, target)
    assert torch.isnan(angles[0, 0, 5])
    stats = M.angle_statistics(angles)
    assert stats["mean"].item() == pytest.approx(33.0)
    assert stats["median"].item() == pytest.approx(20.0)
    assert stats["within_11.25"].item() == pytest.approx(2 / 5)
    assert stats["within_22.5"].item() == pytest.approx(3 / 5)
    assert stats["within_30"].item() == pytest.approx(3 / 5)


def test_normal_median_of_an_even_count_is_numpys():
    angles = [10.0, 20.0, 30.0, 41.0]
    pred = unit_normals(angles)
    target = torch.zeros_like(pred)
    target[:, 2] = 1.0
    stats = M.angle_statistics(M.normal_angles(pred, target))
    assert stats["median"].item() == pytest.approx(float(np.median(angles)))


def test_normal_metrics_average_per_image():
    pred = torch.cat([unit_normals([0.0, 20.0]), unit_normals([40.0, 40.0])])
    target = torch.zeros_like(pred)
    target[:, 2] = 1.0
    target[1, :, :, 1] = 0.0  # second image: one valid pixel (40 degrees)
    ev = DenseEvaluator(["normal"], n_classes=1)
    ev.update({"normal": pred}, {"normal": target})
    out = ev.compute()
    assert out["normal.mean"] == pytest.approx((10.0 + 40.0) / 2)
    assert out["normal.median"] == pytest.approx((10.0 + 40.0) / 2)
    assert out["normal.within_11.25"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["normal.within_30"] == pytest.approx((1.0 + 0.0) / 2)


def test_losses_match_the_reference_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=g)
    labels = torch.randint(-1, 4, (2, 3, 5), generator=g)
    assert segmentation_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=-1).item(), rel=1e-6)

    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [3.0, 8.0]]]])
    assert depth_loss(pred, target).item() == pytest.approx(5 / 3)

    normals = unit_normals([0.0, 60.0, 90.0]).float()
    target = torch.zeros_like(normals)
    target[:, 2, :, :2] = 1.0
    assert normal_loss(normals, target).item() == pytest.approx(1 - (1.0 + 0.5) / 2)
