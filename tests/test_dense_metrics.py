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


# ---------------------------------------------------------------- evaluation pooling (issue: fidelity)
# Five depth images split into unequal evaluation batches (2, then 3); image 2 has no valid pixel,
# image 4 a single one. Per image (abs sum, valid count): (5, 3), (1, 1), (0, 0), (6, 2), (2, 1).
DEPTH_PRED = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0], [1.0, 1.0, 5.0, 5.0],
                           [3.0, 3.0, 3.0, 3.0]]).reshape(5, 1, 2, 2)  # fmt: skip
DEPTH_TARGET = torch.tensor([[2.0, 0.0, 3.0, 8.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0],
                             [0.0, 1.0, 0.0, 0.0]]).reshape(5, 1, 2, 2)  # fmt: skip


def _evaluate(task: str, pred: torch.Tensor, target: torch.Tensor, sizes: list[int], **pooling) -> dict[str, float]:
    ev = DenseEvaluator([task], n_classes=1, **pooling)
    start = 0
    for n in sizes:  # the evaluation batches: unequal, and never aligned with the pooling groups
        ev.update({task: pred[start : start + n]}, {task: target[start : start + n]})
        start += n
    return ev.compute()


def test_depth_pooling_conventions_by_hand():
    sums, counts = [5.0, 1.0, 0.0, 6.0, 2.0], [3, 1, 0, 2, 1]
    rel = [1 / 2 + 0 + 4 / 8, 1 / 2, 0.0, 3 / 4 + 3 / 4, 2 / 1]  # per image: sums of |d̂ - d| / d
    per_image = _evaluate("depth", DEPTH_PRED, DEPTH_TARGET, [2, 3])
    assert per_image["depth.abs_err"] == pytest.approx((5 / 3 + 1 + 3 + 2) / 4)  # image 2 left out
    # batch of 2 (MTAN's test loader on NYUv2): groups {0, 1}, {2, 3}, {4}; the last weighs as much
    batch = _evaluate("depth", DEPTH_PRED, DEPTH_TARGET, [2, 3], pooling="batch", pool_size=2)
    assert batch["depth.abs_err"] == pytest.approx(((5 + 1) / 4 + (0 + 6) / 2 + 2 / 1) / 3)
    assert batch["depth.rel_err"] == pytest.approx(((rel[0] + rel[1]) / 4 + rel[3] / 2 + rel[4] / 1) / 3)
    # a group with no valid pixel is left out: groups of 1 give per-image averaging
    assert _evaluate("depth", DEPTH_PRED, DEPTH_TARGET, [5], pooling="batch", pool_size=1) == pytest.approx(per_image)
    # the whole split (LibMTL: each batch's error weighted by its valid pixels)
    split = _evaluate("depth", DEPTH_PRED, DEPTH_TARGET, [2, 3], pooling="split")
    assert split["depth.abs_err"] == pytest.approx(sum(sums) / sum(counts))
    assert split["depth.rel_err"] == pytest.approx(sum(rel) / sum(counts))


def test_normal_pooling_conventions_by_hand():
    # three images of four pixels; image 1 has one valid pixel, image 2 none
    pred = torch.cat([unit_normals([0.0, 10.0, 20.0, 50.0]), unit_normals([40.0, 0.0, 0.0, 0.0]), unit_normals([5.0] * 4)])
    target = torch.zeros_like(pred)
    target[0, 2] = 1.0
    target[1, 2, :, 0] = 1.0
    angles = {0: [0.0, 10.0, 20.0, 50.0], 1: [40.0], 2: []}

    def stats(values: list[float]) -> dict[str, float]:
        a = np.array(values)
        return {"normal.mean": a.mean(), "normal.median": np.median(a), "normal.within_11.25": (a < 11.25).mean(),
                "normal.within_22.5": (a < 22.5).mean(), "normal.within_30": (a < 30).mean()}  # fmt: skip

    split = _evaluate("normal", pred, target, [1, 2], pooling="split")
    assert split == pytest.approx(stats(angles[0] + angles[1]), abs=1e-5)  # median of the joined angles: 20
    batch = _evaluate("normal", pred, target, [1, 2], pooling="batch", pool_size=2)
    groups = [stats(angles[0] + angles[1])]  # the second group, image 2 alone, has no valid pixel
    assert batch == pytest.approx(groups[0], abs=1e-5)
    per_image = _evaluate("normal", pred, target, [3])
    assert per_image == pytest.approx({k: (stats(angles[0])[k] + stats(angles[1])[k]) / 2 for k in split}, abs=1e-5)
    assert per_image["normal.median"] == pytest.approx((15.0 + 40.0) / 2)
    assert split["normal.median"] == pytest.approx(20.0, abs=1e-5) and batch["normal.median"] == pytest.approx(20.0, abs=1e-5)


@pytest.mark.parametrize("pooling", [{"pooling": "per_image"}, {"pooling": "split"}])
def test_per_image_and_split_do_not_depend_on_the_evaluation_batch_size(pooling):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(7, 1, 4, 5, generator=g) * 5
    target = torch.rand(7, 1, 4, 5, generator=g) * 5 * (torch.rand(7, 1, 4, 5, generator=g) > 0.4)
    normal_pred = F.normalize(torch.randn(7, 3, 4, 5, generator=g), dim=1)
    normal_target = F.normalize(torch.randn(7, 3, 4, 5, generator=g), dim=1) * (torch.rand(7, 1, 4, 5, generator=g) > 0.3)
    for sizes in ([7], [1] * 7, [3, 4], [2, 2, 3]):
        assert _evaluate("depth", pred, target, sizes, **pooling) == pytest.approx(_evaluate("depth", pred, target, [7], **pooling))
        assert _evaluate("normal", normal_pred, normal_target, sizes, **pooling) == pytest.approx(
            _evaluate("normal", normal_pred, normal_target, [7], **pooling), abs=1e-4
        )
    # batch pooling does depend on its group size, by design (the references' test batch)
    assert _evaluate("depth", pred, target, [7], pooling="batch", pool_size=2) != pytest.approx(
        _evaluate("depth", pred, target, [7], pooling="batch", pool_size=3)
    )


def test_dense_tasks_refuse_unknown_pooling_options():
    from tasks.nyuv2 import NYUv2

    with pytest.raises(ValueError, match="eval_pooling='pixels'; valid: per_image, batch, split"):
        NYUv2(eval_pooling="pixels")
    with pytest.raises(ValueError, match="eval_pool_size=0; expected an integer >= 1"):
        NYUv2(eval_pooling="batch", eval_pool_size=0)
    with pytest.raises(ValueError, match="only applies with eval_pooling"):
        NYUv2(eval_pool_size=2)
    task = NYUv2(eval_pooling="batch", eval_pool_size=2)
    ev = task.evaluator(["depth"])
    assert (ev.pooling, ev.pool_size) == ("batch", 2)


def test_every_dense_paper_preset_names_its_evaluation_pooling():
    """Each suite of benchmark.toml that trains a dense task says how its paper pools the test
    errors (docs/dense-prediction.md has the table with the sources)."""
    import tomllib

    from tests.conftest import REPO

    suites = tomllib.loads((REPO / "benchmark.toml").read_text())["suites"]
    dense = {(name, task): opts for name, suite in suites.items() for task, opts in (suite.get("tasks") or {}).items()
             if task in ("nyuv2", "cityscapes")}  # fmt: skip
    assert len(dense) >= 7
    expected = {"nash-nyuv2": ("batch", 2), "nash-cityscapes": ("batch", 8), "libmtl-nyuv2": ("split", None),
                "st-mtan": None, "recon-cityscapes": ("per_image", None), "recon-nyuv2": ("per_image", None)}  # fmt: skip
    for (suite, task), opts in dense.items():
        assert opts.get("eval_pooling") in ("per_image", "batch", "split"), f"suite {suite}, task {task}: no eval_pooling"
        want = expected.get(suite) or ("batch", 2 if task == "nyuv2" else 8)
        assert (opts["eval_pooling"], opts.get("eval_pool_size")) == want, (suite, task)
