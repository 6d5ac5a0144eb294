"""Dense-prediction tasks in MTAN's npy layout (NYUv2, CityScapes): heads, losses, the papers'
augmentation, the split-level evaluator, and :class:`DenseTask`, the base the task files declare.

Losses, heads and augmentation follow MTAN's code (lorenmt/mtan) as CAGrad, Nash-MTL, FAMO and
Recon reuse it:
- segmentation: cross-entropy over the pixels whose label is not -1;
- depth: L1 over the valid pixels (target != 0);
- normals: 1 - mean cosine between predicted (unit) and target normals over the valid pixels;
- head: 3x3 conv then 1x1 conv to the task's channels, on the trunk's full-resolution features;
  the normal head normalises its output to unit length;
- augmentation (training only): random scale-crop with a scale drawn from {1, 1.2, 1.5} (a crop
  of size (H/s, W/s) at a random position, resized back to (H, W): bilinear with
  ``align_corners=True`` for images and normals, nearest for labels and depth, depth divided by
  s), then a horizontal flip with probability 1/2 that negates the normals' x component.

The segmentation loss gathers log-probabilities instead of calling ``F.cross_entropy`` (same
value) because CUDA's 2-D NLL loss has no deterministic implementation. A batch without a valid
pixel contributes a loss of 0 (MTAN's code would divide by zero).

Metrics (:mod:`mtlbench.datasets.metrics`): mIoU and pixel accuracy from one confusion matrix over the
whole split; depth and normal errors pooled over valid pixels as the task's ``eval_pooling``
option says — per image then averaged (``per_image``, the default: Recon), per run of
``eval_pool_size`` consecutive test images then averaged (``batch``: MTAN, CAGrad, Nash-MTL,
FAMO, whose test loaders batch 2 images on NYUv2 and 8 on CityScapes), or over the whole split
(``split``: LibMTL). None of the three depends on ``eval_batch_size``. The paper presets in
benchmark.toml set their paper's; Δm against a suite's ``stl`` compares runs of one setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.core.errors import DataError
from mtlbench.core.spec import MetricSpec, Protocol
from mtlbench.datasets import metrics as M
from mtlbench.datasets import mtan_npy
from mtlbench.datasets.splits import MappedSplit, Split
from mtlbench.plugin.model import init_weights
from mtlbench.plugin.task import Task

SCALES = (1.0, 1.2, 1.5)
VAL_SEED = 0
HEAD_CHANNELS = {"depth": 1, "normal": 3}  # segmentation: the task's class count

SEGMENTATION_METRICS = (
    MetricSpec("segmentation.miou", "segmentation", True, "mIoU"),
    MetricSpec("segmentation.pixacc", "segmentation", True, "Pix Acc"),
)
DEPTH_METRICS = (
    MetricSpec("depth.abs_err", "depth", False, "Abs Err"),
    MetricSpec("depth.rel_err", "depth", False, "Rel Err"),
)
NORMAL_METRICS = (
    MetricSpec("normal.mean", "normal", False, "Angle Mean"),
    MetricSpec("normal.median", "normal", False, "Angle Median"),
    MetricSpec("normal.within_11.25", "normal", True, "Within 11.25°"),
    MetricSpec("normal.within_22.5", "normal", True, "Within 22.5°"),
    MetricSpec("normal.within_30", "normal", True, "Within 30°"),
)
MAIN_METRICS = {"segmentation": "segmentation.miou", "depth": "depth.abs_err", "normal": "normal.mean"}


def mtan_protocol(batch_size: int, eval_batch_size: int) -> Protocol:
    """The NYUv2 / CityScapes protocol of Nash-MTL and FAMO (after MTAN and CAGrad): Adam lr 1e-4
    halved at epoch 100, 200 epochs, test metrics averaged over the last 10 epochs."""
    return Protocol(
        epochs=200,
        batch_size=batch_size,
        optimizer="adam",
        lr=1e-4,
        scheduler="step",
        step_size=100,
        gamma=0.5,
        selection="last_mean",
        last_n=10,
        eval_batch_size=eval_batch_size,
    )


# ---------------------------------------------------------------- heads and losses


class DenseHead(nn.Sequential):
    """MTAN's prediction layer: 3x3 conv, 1x1 conv to ``out_ch``; optionally unit-normalised."""

    def __init__(self, in_ch: int, out_ch: int, unit_norm: bool = False) -> None:
        super().__init__(nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1), nn.Conv2d(in_ch, out_ch, kernel_size=1))
        self.unit_norm = unit_norm
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return F.normalize(out, dim=1) if self.unit_norm else out


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over pixels with a label >= 0 (``F.cross_entropy(..., ignore_index=-1)``)."""
    valid = target >= 0
    picked = logits.log_softmax(dim=1).gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
    return -(picked * valid).sum() / valid.sum().clamp(min=1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over the valid pixels (target != 0)."""
    mask = M.valid_mask(target).unsqueeze(1)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp(min=1)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - mean cosine similarity over the valid pixels (non-zero target vector)."""
    mask = M.valid_mask(target).unsqueeze(1)
    return 1 - (pred * target * mask).sum() / mask.sum().clamp(min=1)


LOSSES = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}


# ---------------------------------------------------------------- augmentation


def random_scale_crop_flip(
    x: Tensor, targets: Mapping[str, Tensor], generator: torch.Generator, scales: Sequence[float] = SCALES
) -> tuple[Tensor, dict[str, Tensor]]:
    """The papers' augmentation of one batch (see the module docstring), one draw per image.

    ``targets`` may hold ``segmentation`` (N, H, W), ``depth`` (N, 1, H, W), ``normal`` (N, 3, H, W).
    """
    height, width = x.shape[-2:]
    images: list[Tensor] = []
    outs: dict[str, list[Tensor]] = {k: [] for k in targets}
    for s in range(x.shape[0]):
        scale = scales[int(torch.randint(len(scales), (1,), generator=generator))]
        h, w = int(height / scale), int(width / scale)
        i = int(torch.randint(height - h + 1, (1,), generator=generator))
        j = int(torch.randint(width - w + 1, (1,), generator=generator))
        flip = bool(torch.rand(1, generator=generator) < 0.5)

        def crop(t: Tensor, mode: str, box: tuple[int, int, int, int] = (i, j, h, w), flip: bool = flip) -> Tensor:
            top, left, h, w = box
            t = t[None, ..., top : top + h, left : left + w]
            if (h, w) != (height, width):
                kwargs = {"align_corners": True} if mode == "bilinear" else {}
                t = F.interpolate(t, size=(height, width), mode=mode, **kwargs)
            t = t[0]
            return t.flip(-1) if flip else t

        images.append(crop(x[s], "bilinear"))
        for name, t in targets.items():
            if name == "segmentation":
                out = crop(t[s][None].float(), "nearest")[0].to(t.dtype)
            elif name == "depth":
                out = crop(t[s], "nearest") / scale
            elif name == "normal":
                out = crop(t[s], "bilinear")
                if flip:
                    out = torch.cat((-out[:1], out[1:]))
            else:
                raise KeyError(f"no augmentation rule for target {name!r}")
            outs[name].append(out)
    return torch.stack(images), {k: torch.stack(v) for k, v in outs.items()}


# ---------------------------------------------------------------- evaluation


POOLINGS = ("per_image", "batch", "split")


class DenseEvaluator:
    """Accumulates one split: a confusion matrix for segmentation; depth and normal errors pooled
    as ``pooling`` says (see :class:`DenseTask`'s ``eval_pooling``):

    - ``per_image``: each image's errors over its valid pixels, averaged over the images (Recon,
      which tests one image at a time); independent of how the split is batched;
    - ``batch``: the valid pixels of each run of ``pool_size`` consecutive images pooled, the
      groups' errors averaged, the last, smaller group weighing as much as a full one (MTAN,
      CAGrad, Nash-MTL, FAMO: their test loaders' batches of 2 on NYUv2, 8 on CityScapes);
    - ``split``: the valid pixels of the whole split pooled (LibMTL: depth errors weighted by
      valid pixels, all normal angles joined before the mean and the median).

    Images, and groups, without a valid pixel are left out (the references would divide by
    zero). Normal angles wait for their group as float32 (the whole split's for ``split``:
    about 290 MB on NYUv2's test split); the statistics are computed in float64."""

    def __init__(self, tasks: Sequence[str], n_classes: int, pooling: str = "per_image", pool_size: int = 1) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"evaluation pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.tasks = list(tasks)
        self.n_classes = n_classes
        self.pooling = pooling
        self.pool_size = int(pool_size)
        self.conf = torch.zeros(n_classes, n_classes, dtype=torch.int64)
        self.sums: dict[str, float] = {}
        self.images = {t: 0 for t in self.tasks}
        self.pending: dict[str, list[Any]] = {t: [] for t in self.tasks}  # the open group's per-image parts

    def _add(self, task: str, values: Mapping[str, Tensor]) -> None:
        ok = ~torch.isnan(next(iter(values.values())))
        self.images[task] += int(ok.sum())
        for name, v in values.items():
            key = f"{task}.{name}"
            self.sums[key] = self.sums.get(key, 0.0) + float(v[ok].sum())

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            out, target = outputs[t].detach(), targets[t]
            if t == "segmentation":
                self.conf += M.confusion_matrix(out.argmax(dim=1), target, self.n_classes).cpu()
            elif t not in ("depth", "normal"):
                raise KeyError(f"no metrics for sub-task {t!r}")
            elif self.pooling == "per_image" and t == "depth":
                abs_err, rel_err, _ = M.depth_errors(out, target)
                self._add(t, {"abs_err": abs_err, "rel_err": rel_err})
            elif self.pooling == "per_image":
                self._add(t, M.angle_statistics(M.normal_angles(out, target)))
            else:
                parts = _depth_parts(out, target) if t == "depth" else _normal_parts(out, target)
                for part in parts:
                    self.pending[t].append(part)
                    if self.pooling == "batch" and len(self.pending[t]) == self.pool_size:
                        self._close(t)

    def _close(self, task: str) -> None:
        """Pool the open group of ``task`` into one set of errors (left out without a valid pixel)."""
        parts, self.pending[task] = self.pending[task], []
        if task == "depth":
            count = sum(c for _, _, c in parts)
            abs_sum, rel_sum = sum(a for a, _, _ in parts), sum(r for _, r, _ in parts)
            stats = {"abs_err": abs_sum / count, "rel_err": rel_sum / count} if count else {}
        else:
            angles = torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)
            stats = {k: float(v[0]) for k, v in M.angle_statistics(angles[None]).items()} if angles.numel() else {}
        if stats:
            self.images[task] += 1
            for name, v in stats.items():
                self.sums[f"{task}.{name}"] = self.sums.get(f"{task}.{name}", 0.0) + v

    def compute(self) -> dict[str, float]:
        for t in self.tasks:
            if self.pending[t]:
                self._close(t)
        out: dict[str, float] = {}
        if "segmentation" in self.tasks:
            out["segmentation.miou"] = M.mean_iou(self.conf)
            out["segmentation.pixacc"] = M.pixel_accuracy(self.conf)
        for key, total in self.sums.items():
            n = self.images[key.split(".", 1)[0]]
            out[key] = total / n if n else float("nan")
        return out


def _depth_parts(pred: Tensor, target: Tensor) -> list[tuple[float, float, int]]:
    """Per image: the sums of absolute and relative errors over its valid pixels, and their count."""
    abs_sum, rel_sum, count = M.depth_sums(pred, target)
    return list(zip(abs_sum.tolist(), rel_sum.tolist(), count.tolist()))


def _normal_parts(pred: Tensor, target: Tensor) -> list[Tensor]:
    """Per image: the angles (degrees) at its valid pixels, as float32."""
    angles = M.normal_angles(pred, target)
    return [a[~torch.isnan(a)].float().cpu() for a in angles]


# ---------------------------------------------------------------- the task base


class DenseTask(Task):
    """A dense-prediction dataset in MTAN's npy layout. Subclasses declare ``name``, ``tasks``,
    ``metrics``, ``protocol``, ``layout`` and ``selection_reference``.

    Splits: ``test`` is the source's ``val`` folder (what the papers report on); ``val`` is a
    share ``val_fraction`` of the source's training images drawn with a fixed seed (NumPy
    ``default_rng(0)``), ``train`` the rest (in that shuffled order, so ``max_train_samples``
    takes a random subset). The papers train on all training images and have no validation
    split; ours never touches the test split for selection.

    Checkpoint selection with ``best_val`` maximises minus the flat Δm of the validation
    metrics against ``selection_reference`` (the published single-task values, used only as
    per-metric scales so that mIoU, errors and angles weigh alike).
    """

    representation = "dense"
    layout: ClassVar[mtan_npy.Layout]
    main_metrics = MAIN_METRICS
    selection_reference: ClassVar[Mapping[str, float]] = {}

    def __init__(
        self, augmentation: bool = True, val_fraction: float = 0.1, eval_pooling: str = "per_image", eval_pool_size: int = 1
    ) -> None:
        if not isinstance(augmentation, bool):
            raise ValueError(f"task {self.name}: option augmentation must be true or false, got {augmentation!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"task {self.name}: option val_fraction={val_fraction!r}; expected a number in (0, 1)")
        if eval_pooling not in POOLINGS:
            raise ValueError(
                f"task {self.name}: option eval_pooling={eval_pooling!r}; valid: {', '.join(POOLINGS)} "
                "(per_image: Recon; batch: MTAN, CAGrad, Nash-MTL, FAMO with eval_pool_size = their test batch; split: LibMTL)"
            )
        if isinstance(eval_pool_size, bool) or not isinstance(eval_pool_size, int) or eval_pool_size < 1:
            raise ValueError(f"task {self.name}: option eval_pool_size={eval_pool_size!r}; expected an integer >= 1")
        if eval_pool_size != 1 and eval_pooling != "batch":
            raise ValueError(
                f'task {self.name}: option eval_pool_size={eval_pool_size} only applies with eval_pooling = "batch" '
                f"(it is {eval_pooling!r}); remove it"
            )
        super().__init__(
            augmentation=augmentation,
            val_fraction=float(val_fraction),
            eval_pooling=eval_pooling,
            eval_pool_size=eval_pool_size,
        )
        self.augmentation = augmentation
        self.val_fraction = float(val_fraction)
        self.eval_pooling = eval_pooling
        self.eval_pool_size = eval_pool_size

    def store_path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.name / f"mtan-npy-v{mtan_npy.STORE_FORMAT}"

    # -- data
    def prepare(self, source: Path, data_dir: Path) -> Path:
        return mtan_npy.prepare(Path(source), self.store_path(data_dir), self.layout)

    def load(self, data_dir: Path) -> dict[str, Split]:
        columns = mtan_npy.open_store(self.store_path(data_dir), self.layout)
        image = self.layout.modalities[0].column
        dtypes = {"segmentation": torch.int64}

        def split(cols: dict[str, Any]) -> MappedSplit:
            return MappedSplit(cols[image], {t: cols[t] for t in self.tasks}, dtypes=dtypes)

        train, test = split(columns["train"]), split(columns["test"])
        n_val = max(1, round(self.val_fraction * len(train)))
        if n_val >= len(train):
            raise DataError(
                f"{self.store_path(data_dir)}: {len(train)} training images cannot give a validation "
                f"share of {self.val_fraction}; lower val_fraction"
            )
        order = np.random.default_rng(VAL_SEED).permutation(len(train))
        return {"train": train.select(order[n_val:]), "val": train.select(order[:n_val]), "test": test}

    def augment(self, x: Tensor, targets: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.augmentation:
            return x, targets
        return random_scale_crop_flip(x, targets, generator)

    # -- model parts
    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        out = self.layout.n_classes if task == "segmentation" else HEAD_CHANNELS[task]
        return DenseHead(feature_dim, out, unit_norm=task == "normal")

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return LOSSES[task](output, target)

    def evaluator(self, tasks: Sequence[str]) -> DenseEvaluator:
        return DenseEvaluator(tasks, self.layout.n_classes, self.eval_pooling, self.eval_pool_size)

    def selection_score(self, metrics: Mapping[str, float], tasks: Sequence[str]) -> float:
        terms = []
        for m in self.metrics:
            if m.task in tasks:
                ref = self.selection_reference[m.key]
                terms.append((metrics[m.key] - ref) / ref * (1.0 if m.higher_is_better else -1.0))
        return float(sum(terms) / len(terms))
