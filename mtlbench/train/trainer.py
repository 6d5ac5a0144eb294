"""The step loop of one model: seeds, optimiser, the method's update, conflict sampling,
epoch-wise evaluation and checkpoint selection on the validation split.

:class:`Trainer` holds what one model's training needs and runs it (:meth:`Trainer.fit`);
orchestrating a whole cell (one model, or one per sub-task for the single-task baseline, and
the mitigation's work before training) is :mod:`mtlbench.train.cell`'s job.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtlbench.core.result import Conflict
from mtlbench.core.spec import HISTOGRAMS, ConflictSettings, Protocol
from mtlbench.datasets.splits import MultiInputSplit, Split
from mtlbench.plugin.method import GradientAggregator, Method, StepInfo
from mtlbench.plugin.mitigation import Mitigation
from mtlbench.plugin.model import MultiTaskModel
from mtlbench.plugin.task import Task
from mtlbench.train import distributed
from mtlbench.train.checkpoint import Checkpoint
from mtlbench.train.conflict import REFERENCE_SET, ConflictRecorder, ReferenceConflict
from mtlbench.train.gradients import clip_grad_norm, default_strategy
from mtlbench.train.strategies import (
    ConflictProbe,
    LookAhead,
    NonFiniteError,
    StepContext,
    StepInputs,
    forward,
    strategy_for,
)

AnySplit = Split | MultiInputSplit
Batch = Tensor | Mapping[str, Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(device: torch.device, enabled: bool = True) -> None:
    """Deterministic kernels: always on CPU (cheap there; resume is exact); on CUDA when
    ``enabled`` (deterministic algorithms, cuDNN without autotuning, and cuBLAS's fixed
    workspace, which must be configured before the process's first cuBLAS call)."""
    if device.type == "cuda":
        if enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled or device.type != "cuda")


@dataclass
class FitOutput:
    epochs: list[dict[str, Any]]
    step_times: list[float] = field(default_factory=list)
    conflict_time: float = 0.0
    conflict: Conflict | None = None  # the sampled conflict statistics
    task_gradients: dict[str, Any] | None = None  # strategy and chunk size of the per-task gradients
    params: int = 0
    params_shared: int = 0
    selection: dict[str, Any] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)


def make_optimizer(params: list[nn.Parameter], p: Protocol) -> torch.optim.Optimizer:
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, p: Protocol) -> Any:
    if p.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p.step_size, gamma=p.gamma)
    if p.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
    if p.scheduler == "plateau":  # stepped with the validation score after each epoch
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=p.gamma, patience=p.step_size, min_lr=p.lr / 100
        )
    return None


def to_device(x: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)


def for_tasks(split: AnySplit, tasks: Sequence[str]) -> AnySplit:
    """A multi-input split keeps the inputs of ``tasks`` only; a single-input split is shared."""
    return split.for_tasks(tasks) if isinstance(split, MultiInputSplit) else split


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, tasks: Sequence[str], split: AnySplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    """The metrics of ``tasks`` on ``split``; in a run over several processes the batches are
    shared out between the ranks and every rank's metric state sees them all, in order."""
    model.eval()
    ev = task.evaluator(tasks)
    batches = for_tasks(split, tasks).batches(batch_size)
    world = distributed.current()
    if world is None:
        for x, y in batches:
            ev.update(forward(model, to_device(x, device)), {k: v.to(device) for k, v in y.items() if k in tasks})
    else:

        def run(x: Batch, y: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            outputs = forward(model, to_device(x, device))
            return {k: v.cpu() for k, v in outputs.items()}, {k: v for k, v in y.items() if k in tasks}

        def update(outputs: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> None:
            ev.update({k: v.to(device) for k, v in outputs.items()}, {k: v.to(device) for k, v in y.items()})

        world.evaluate(batches, run, update)
    return {k: float(v) for k, v in ev.compute().items()}


def training_split(splits: Mapping[str, AnySplit], tasks: Sequence[str], protocol: Protocol) -> AnySplit:
    """The part of the training split ``tasks`` train on (``max_train_samples`` applied)."""
    train = for_tasks(splits["train"], tasks)
    if protocol.max_train_samples and protocol.max_train_samples < len(train):
        train = train.subset(protocol.max_train_samples)
    return train


def total_steps(splits: Mapping[str, AnySplit], tasks: Sequence[str], protocol: Protocol) -> int:
    return (len(training_split(splits, tasks, protocol)) // protocol.batch_size) * protocol.epochs


class Trainer:
    """Trains ``model`` on ``tasks`` with ``method`` (None: plain sum, for one task).

    With a multi-input task each step holds one batch per sub-task; each sub-task's loss comes
    from its own batch through the shared trunk (see :class:`mtlbench.datasets.splits.MultiInputSplit`).
    ``mitigation`` (already prepared on ``model``) may mask task gradients and updates.
    ``conflict``: the conflict sampling settings.
    ``checkpoint``: restore the state of an interrupted run before the first epoch, save the
    state after every epoch (see mtlbench/train/checkpoint.py)."""

    def __init__(
        self,
        model: MultiTaskModel,
        task: Task,
        tasks: Sequence[str],
        method: Method | None,
        splits: Mapping[str, AnySplit],
        protocol: Protocol,
        conflict: ConflictSettings,
        seed: int,
        device: torch.device,
        *,
        mitigation: Mitigation | None = None,
        checkpoint: Checkpoint | None = None,
        desc: str = "",
        progress: bool = True,
    ) -> None:
        self.model, self.task, self.tasks, self.method = model.to(device), task, list(tasks), method
        self.splits, self.protocol, self.device = splits, protocol, device
        self.mitigation, self.checkpoint, self.desc, self.progress = mitigation, checkpoint, desc, progress
        if method is not None:
            method.to(device)
        self.world = distributed.current()  # a run over several processes: this rank's place
        if self.world is not None:
            distributed.check_supported(method, task)
            if protocol.batch_size % self.world.size:
                raise ValueError(
                    f"batch_size {protocol.batch_size} cannot be split into {self.world.size} equal shards (one per "
                    "process): choose a batch size divisible by processes_per_run"
                )
            distributed.synchronise_batch_norms(model)
        self.train = training_split(splits, tasks, protocol)
        self.steps_per_epoch = len(self.train) // protocol.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {protocol.batch_size} exceeds the {len(self.train)} training samples")
        self.total_steps = self.steps_per_epoch * protocol.epochs
        layers = model.shared_layers()
        self.shared = [p for _, ps in layers for p in ps]
        self.head_params = [model.task_parameters(t) for t in tasks]
        self.recorder = ConflictRecorder(
            tasks,
            [n for n, _ in layers],
            [sum(p.numel() for p in ps) for _, ps in layers],
            every=conflict.every,
            edges=HISTOGRAMS[conflict.histogram],
            s_values=conflict.s,
        )
        masks = mitigation is not None and mitigation.masks_gradients
        # None: the reference set is what the method updates, unmasked: the recorder's statistics are its
        self.reference = reference_conflict(model, self.shared, tasks, self.recorder, masks)
        mask = mitigation.mask_task_gradients if mitigation is not None else (lambda g: g)
        self.update = strategy_for(method)  # the method kind's way from losses to gradients
        self.likelihoods = [task.likelihoods.get(t) for t in self.tasks]  # as the task declares them
        gradients = default_strategy(device, len(tasks))
        if self.world is not None:  # a synchronised batch norm's collective cannot run inside vmap
            gradients = ("loop", gradients[1])
        self.context = StepContext(
            self.shared, self.head_params, gradients, mask,
            ConflictProbe(self.recorder, self.reference, mask, self.world), world=self.world,
        )  # fmt: skip
        params = list(model.parameters()) + (list(method.parameters()) if method is not None else [])
        self.optimizer = make_optimizer([p for p in params if p.requires_grad], protocol)
        self.scheduler = make_scheduler(self.optimizer, protocol)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 1_000_003)
        self.method_gen = torch.Generator(device="cpu").manual_seed(seed + 2_000_003)
        # a meta-weighting method's meta batches: an independent shuffled pass over the training split
        self.meta_gen = torch.Generator().manual_seed(seed + 3_000_017) if isinstance(self.update, LookAhead) else None
        self.layer_sizes = self.update.layer_sizes(tuple(self.recorder.layer_sizes))
        self.out = FitOutput(epochs=[], params=count_parameters(model), params_shared=sum(p.numel() for p in self.shared))
        if isinstance(method, GradientAggregator) or self.recorder.every > 0:
            kind, chunk = self.context.gradients
            self.out.task_gradients = {"strategy": kind, "chunk_size": chunk}
        self.step = 0
        self.best: tuple[float, int, dict[str, Any]] | None = None
        self.start_epoch_record()

    def resumable(self) -> dict[str, Any]:
        """Everything that changes during training, by name (what a checkpoint saves)."""
        reference = {"reference_recorder": self.reference.recorder} if self.reference is not None else {}
        return {
            **reference,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "method": self.method,
            "recorder": self.recorder,
            "data_order": self.data_gen,
            "augment": self.aug_gen,
            "method_rng": self.method_gen,
            **({"meta_order": self.meta_gen} if self.meta_gen is not None else {}),
            "out": self.out,
        }

    def fit(self, max_steps: int | None = None) -> FitOutput:
        """Train every epoch, evaluate and select. ``max_steps`` stops training after that many
        steps and skips evaluation (a search phase): the output then holds only the conflict
        statistics and timings."""
        start_epoch = 0
        if self.checkpoint is not None:
            start_epoch, self.step, self.best = self.checkpoint.restore(self.resumable())
        bar = _bar(self.total_steps, self.desc, self.progress)
        if bar is not None and self.step:
            bar.update(self.step)
        for epoch in range(start_epoch, self.protocol.epochs):
            stopped = self.train_epoch(epoch, bar, max_steps)
            if stopped:
                break  # search phase: no evaluation
            self.end_epoch(epoch)
        if bar is not None:
            bar.close()
        conflict = self.recorder.summary()
        if conflict is not None:
            source = self.reference.recorder if self.reference is not None else self.recorder
            reference = source.reference_summary(REFERENCE_SET)
            conflict = conflict.model_copy(update={"parameters": UPDATED_SET, "reference": reference})
        self.out.conflict = conflict
        if max_steps is None or self.step < max_steps:
            self.select()
        return self.out

    def train_epoch(self, epoch: int, bar: Any, max_steps: int | None) -> bool:
        """One epoch of steps; True when ``max_steps`` was reached."""
        self.model.train()
        self.start_epoch_record()
        samples_per_step = self.update.samples_per_step
        metas: Iterator[Any] | None = None
        if self.meta_gen is not None:  # one pass of meta batches beside the pass of training batches
            metas = iter(self.train.batches(self.protocol.batch_size, generator=self.meta_gen, drop_last=True))
        for samples in step_batches(self.train, self.protocol.batch_size, self.data_gen, self.steps_per_epoch, samples_per_step):
            losses = self.train_step(samples, epoch, next(metas) if metas is not None else None)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{self.protocol.epochs}", loss=f"{float(losses.detach().sum()):.3f}", refresh=False
                )
            if max_steps is not None and self.step >= max_steps:
                return True
        return False

    def start_epoch_record(self) -> None:
        """Reset what an epoch's record sums (training losses, batches, time)."""
        self.loss_sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        self.n_batches = 0
        self.t_epoch = time.perf_counter()

    def train_step(
        self, samples: list[tuple[Batch, dict[str, Tensor]]], epoch: int, meta: tuple[Batch, dict[str, Tensor]] | None = None
    ) -> Tensor:
        """One optimiser step on one batch (a multi-sample method: on its independent batches;
        a meta-weighting method also gets its meta batch); returns the task losses (averaged
        over the batches)."""
        method = self.method
        inputs = [self.prepare(x, y) for x, y in samples]
        if self.world is not None:  # this rank's block of each batch
            inputs = [(self.world.shard(x), self.world.shard(y)) for x, y in inputs]
        t0 = time.perf_counter()
        per_sample = []
        for x, y in inputs:
            per_sample.append(self.losses_of(self.update.outputs(self.model, x), y))
        losses = per_sample[0] if len(per_sample) == 1 else torch.stack([s.detach() for s in per_sample])
        if not torch.isfinite(losses).all():
            raise NonFiniteError(f"non-finite loss at epoch {epoch} step {self.step}: {losses.tolist()}")
        info = StepInfo(
            step=self.step,
            epoch=epoch,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            generator=self.method_gen,
            layer_sizes=self.layer_sizes,
        )
        if self.update.needs_inputs:
            meta_batch = self.prepare(*meta) if meta is not None else None
            self.context.inputs = StepInputs(
                self.model, self.optimizer, self.losses_of, inputs[0], meta_batch, self.apply_update,
                self.tasks, self.likelihoods,
            )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        self.context.probe.begin(self.step, per_sample[0])
        self.update.fill_gradients(per_sample, info, self.context)
        if self.world is not None and not self.update.global_gradients:
            self.world.average_grads(p for group in self.optimizer.param_groups for p in group["params"])
        measured = self.context.probe.seconds
        self.apply_update()
        if method is not None and method.wants_losses_after_step:
            losses_after_step(self.model, self.task, self.tasks, method, *inputs[0], info, self.world)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.out.step_times.append(time.perf_counter() - t0 - measured)
        self.out.conflict_time += measured
        losses = losses if losses.dim() == 1 else losses.mean(dim=0)
        self.loss_sums += losses.detach().double().cpu()
        self.n_batches += 1
        self.step += 1
        return losses

    def apply_update(self) -> None:
        """The update from the parameters' ``.grad``: the mitigation's mask, clipping, the
        optimiser's step, the mitigation's after-step."""
        mitigation = self.mitigation
        if mitigation is not None:
            mitigation.before_step()  # masks the update first: clipping then sees only what is trained
        if self.method is not None:
            clip_grad_norm(self.shared, self.method.max_norm)
        self.optimizer.step()
        if mitigation is not None:
            mitigation.after_step(self.optimizer)

    def prepare(self, x: Batch, y: dict[str, Tensor]) -> tuple[Batch, dict[str, Tensor]]:
        """A training batch augmented and on the device."""
        x, y = self.task.augment(x, y, self.aug_gen)  # type: ignore[arg-type]  # multi-input tasks augment a dict
        return to_device(x, self.device), {k: v.to(self.device) for k, v in y.items()}

    def losses_of(self, outputs: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Tensor:
        """The (T,) task losses of a batch's outputs (over several processes: the global batch's,
        see :meth:`mtlbench.train.distributed.World.losses`)."""
        losses = task_losses(self.task, self.tasks, outputs, y)
        return losses if self.world is None else self.world.losses(losses)

    def end_epoch(self, epoch: int) -> None:
        """Scheduler step, validation, the epoch's record, selection bookkeeping, checkpoint."""
        p = self.protocol
        if self.scheduler is not None and p.scheduler != "plateau":
            self.scheduler.step()
        val = evaluate(self.model, self.task, self.tasks, self.splits["val"], p.eval_batch_size, self.device)
        if p.scheduler == "plateau":
            self.scheduler.step(self.task.selection_score(val, self.tasks))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": {t: float(self.loss_sums[i] / max(self.n_batches, 1)) for i, t in enumerate(self.tasks)},
            "train_time_s": time.perf_counter() - self.t_epoch,
            "val": val,
        }
        if p.selection == "best_val":
            score = self.task.selection_score(val, self.tasks)
            if self.best is None or score > self.best[0]:  # ties keep the earlier epoch
                self.best = (score, epoch + 1, copy.deepcopy(self.model.state_dict()))
        elif epoch >= p.epochs - p.last_n:  # test only on the epochs the rule reports
            record["test"] = evaluate(self.model, self.task, self.tasks, self.splits["test"], p.eval_batch_size, self.device)
        self.out.epochs.append(record)
        if self.checkpoint is not None and (self.world is None or self.world.leader):
            self.checkpoint.save(self.resumable(), epoch + 1, self.step, self.best)

    def select(self) -> None:
        """The reported metrics: the test split at the best validation epoch, or the mean of
        the last ``last_n`` epochs (the test split never selects anything)."""
        out, p = self.out, self.protocol
        if self.best is not None:
            score, epoch_sel, state = self.best
            self.model.load_state_dict(state)
            test = evaluate(self.model, self.task, self.tasks, self.splits["test"], p.eval_batch_size, self.device)
            val = next(e["val"] for e in out.epochs if e["epoch"] == epoch_sel)
            out.selection = {"rule": "best_val", "epoch": epoch_sel, "val_score": score}
        else:
            window = out.epochs[-p.last_n :]
            val, test = _mean_of(window, "val"), _mean_of(window, "test")
            out.selection = {"rule": "last_mean", "epochs": [e["epoch"] for e in window]}
        out.val, out.test = val, test


def _mean_of(window: list[dict[str, Any]], split: str) -> dict[str, float]:
    return {k: statistics.fmean(e[split][k] for e in window) for k in window[0][split]}


UPDATED_SET = "the shared parameters the method updates (after a mitigation's surgery and mask)"


def reference_conflict(
    model: MultiTaskModel, shared: list[nn.Parameter], tasks: Sequence[str], recorder: ConflictRecorder, masked: bool = True
) -> ReferenceConflict | None:
    """The reference-set statistics of a model (see :class:`ReferenceConflict`), sampled at the
    steps ``recorder`` samples; None when they are ``recorder``'s own (the reference set is the
    shared parameters and no mitigation masks their gradients)."""
    layers = model.reference_layers(len(tasks))
    per_task = [[p for _, per in layers for p in per[t]] for t in range(len(tasks))]
    same = all(len(ps) == len(shared) and all(a is b for a, b in zip(ps, shared)) for ps in per_task)
    if same and not masked:
        return None
    sizes = [sum(p.numel() for p in per[0]) for _, per in layers]
    ref = ConflictRecorder(tasks, [n for n, _ in layers], sizes, every=recorder.every, edges=recorder.edges)
    return ReferenceConflict(ref, None if same else per_task)


def step_batches(train: AnySplit, batch_size: int, generator: torch.Generator, steps: int, samples: int) -> Iterator[list[Any]]:
    """An epoch's steps, each a list of ``samples`` training batches. One sample per step: one
    pass over the shuffled training data. More (multi-sample methods): the data is cycled, each
    pass freshly shuffled by ``generator``, so the epoch keeps its ``steps`` and each step draws
    ``samples`` consecutive batches (LibMTL's trainer does the same); the unused rest of the
    last pass is dropped at the epoch's end, so an epoch's batches depend only on the
    generator's state at its start (a resumed run sees the same batches)."""
    if samples == 1:
        for single in train.batches(batch_size, generator=generator, drop_last=True):
            yield [single]
        return
    stream: Iterator[Any] = iter(())
    for _ in range(steps):
        group: list[Any] = []
        while len(group) < samples:
            batch: Any = next(stream, None)
            if batch is None:
                stream = iter(train.batches(batch_size, generator=generator, drop_last=True))
                continue
            group.append(batch)
        yield group


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def task_losses(task: Task, tasks: Sequence[str], outputs: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Tensor:
    """The (T,) losses of ``tasks`` for a batch's outputs and targets."""
    return torch.stack([task.loss(t, outputs[t], y[t]) for t in tasks])


@torch.no_grad()
def losses_after_step(
    model: MultiTaskModel,
    task: Task,
    tasks: Sequence[str],
    method: Method,
    x: Batch,
    y: dict[str, Tensor],
    info: StepInfo,
    world: distributed.World | None = None,
) -> None:
    """The same batch's task losses after the optimiser step, for methods that ask (FAMO);
    over several processes, the global batch's (the mean of the ranks')."""
    losses = task_losses(task, tasks, forward(model, x), y)
    method.after_step(losses if world is None else world.mean(losses), info)


def _bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)
