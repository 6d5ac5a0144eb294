"""Training of one cell: seeds, model, optimiser, the method's update, conflict sampling,
epoch-wise evaluation, checkpoint selection on the validation split, and the result record."""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtlbench.core.spec import Protocol
from mtlbench.datasets.splits import MultiInputSplit, Split
from mtlbench.plugin.method import GradientAggregator, LossWeighting, Method, StepInfo
from mtlbench.plugin.task import Task
from mtlbench.backbones.build import BackboneSpec, build_multitask_model, count_parameters
from mtlbench.core.cell import RESULT_SCHEMA, Cell
from mtlbench.train.checkpoint import CellCheckpoints, Checkpoint
from mtlbench.train.conflict import HISTOGRAMS, ConflictRecorder
from mtlbench.train.gradients import assign_flat_grad, clip_grad_norm, default_strategy, pullback_rows, task_gradients
from mtlbench.plugin.mitigation import Mitigation, MitigationContext
from mtlbench.plugin.model import MultiTaskModel
from mtlbench.grid.plugins import Plugins
from mtlbench.train.provenance import PeakMemory, collect, now_iso


class NonFiniteError(RuntimeError):
    """A loss or an update became NaN/Inf."""


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
    conflict: dict[str, Any] | None = None
    task_gradients: dict[str, Any] | None = None  # strategy and chunk size of the per-task gradients
    params: int = 0
    params_shared: int = 0
    selection: dict[str, Any] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)


def build_model(task: Task, spec: BackboneSpec, tasks: Sequence[str]) -> MultiTaskModel:
    return build_multitask_model(spec, task.input_shape, task.representation, tasks, task.build_head)


def make_optimizer(params: list[nn.Parameter], p: Protocol) -> torch.optim.Optimizer:
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    if p.optimizer == "adam":
        return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, p: Protocol):
    if p.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p.step_size, gamma=p.gamma)
    if p.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
    return None


def to_device(x: Tensor | Mapping[str, Tensor], device: torch.device) -> Tensor | dict[str, Tensor]:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)


def for_tasks(split: Split | MultiInputSplit, tasks: Sequence[str]) -> Split | MultiInputSplit:
    """A multi-input split keeps the inputs of ``tasks`` only; a single-input split is shared."""
    return split.for_tasks(tasks) if isinstance(split, MultiInputSplit) else split


def forward(model: nn.Module, x: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The model's outputs for a batch. A multi-input batch (``{task: inputs}``) runs each
    sub-task's own inputs through the model separately and keeps that sub-task's output."""
    if isinstance(x, Mapping):
        return {t: model(inputs)[t] for t, inputs in x.items()}
    return model(x)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, tasks: Sequence[str], split: Split | MultiInputSplit, batch_size: int,
             device: torch.device) -> dict[str, float]:
    model.eval()
    ev = task.evaluator(tasks)
    for x, y in for_tasks(split, tasks).batches(batch_size):
        ev.update(forward(model, to_device(x, device)), {k: v.to(device) for k, v in y.items() if k in tasks})
    return {k: float(v) for k, v in ev.compute().items()}


def fit(model: MultiTaskModel, task: Task, tasks: Sequence[str], method: Method | None,
        splits: dict[str, Split | MultiInputSplit], protocol: Protocol, conflict_cfg: dict[str, Any], seed: int,
        device: torch.device, desc: str = "", progress: bool = True,
        mitigation: Mitigation | None = None, max_steps: int | None = None,
        checkpoint: Checkpoint | None = None) -> FitOutput:
    """Train ``model`` on ``tasks`` with ``method`` (None: plain sum, for one task).

    With a multi-input task each step holds one batch per sub-task; each sub-task's loss comes
    from its own batch through the shared trunk (see :class:`mtlbench.datasets.splits.MultiInputSplit`).
    ``mitigation`` (already prepared on ``model``) may mask task gradients and updates.
    ``max_steps`` stops training after that many steps and skips evaluation (Recon's search
    phase): the output then holds only the conflict statistics and timings.
    ``checkpoint``: restore the state of an interrupted run before the first epoch, save the
    state after every epoch (see mtlbench/train/checkpoint.py)."""
    model.to(device)
    if method is not None:
        method.to(device)
    train = training_split(splits, tasks, protocol)
    steps_per_epoch = len(train) // protocol.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {protocol.batch_size} exceeds the {len(train)} training samples")
    total_steps = steps_per_epoch * protocol.epochs

    layers = model.shared_layers()
    shared = [p for _, ps in layers for p in ps]
    head_params = [model.task_parameters(t) for t in tasks]
    recorder = ConflictRecorder(
        tasks, [n for n, _ in layers], [sum(p.numel() for p in ps) for _, ps in layers],
        every=int(conflict_cfg.get("every", 0)), edges=HISTOGRAMS[conflict_cfg.get("histogram", "recon")],
        s_values=conflict_cfg.get("s", ()),
    )
    params = list(model.parameters()) + (list(method.parameters()) if method is not None else [])
    opt = make_optimizer([p for p in params if p.requires_grad], protocol)
    sched = make_scheduler(opt, protocol)
    data_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1_000_003)
    method_gen = torch.Generator(device="cpu").manual_seed(seed + 2_000_003)
    strategy = default_strategy(device, len(tasks))
    per_rep = isinstance(method, GradientAggregator) and method.gradients == "representation"
    layer_sizes = () if per_rep else tuple(recorder.layer_sizes)

    out = FitOutput(epochs=[], params=count_parameters(model), params_shared=sum(p.numel() for p in shared))
    if isinstance(method, GradientAggregator) or recorder.every > 0:
        out.task_gradients = {"strategy": strategy[0], "chunk_size": strategy[1]}
    bar = _bar(total_steps, desc, progress)
    resumable = {"model": model, "optimizer": opt, "scheduler": sched, "method": method, "recorder": recorder,
                 "data_order": data_gen, "augment": aug_gen, "method_rng": method_gen, "out": out}
    best: tuple[float, int, dict[str, Any]] | None
    start_epoch, step, best = checkpoint.restore(resumable) if checkpoint is not None else (0, 0, None)
    if bar is not None and step:
        bar.update(step)
    for epoch in range(start_epoch, protocol.epochs):
        model.train()
        loss_sums = torch.zeros(len(tasks), dtype=torch.float64)
        n_batches = 0
        t_epoch = time.perf_counter()
        for x, y in train.batches(protocol.batch_size, generator=data_gen, drop_last=True):
            x, y = task.augment(x, y, aug_gen)
            x = to_device(x, device)
            y = {k: v.to(device) for k, v in y.items()}
            t0 = time.perf_counter()
            outputs, z, rep = _forward(model, x, per_rep)
            losses = torch.stack([task.loss(t, outputs[t], y[t]) for t in tasks])
            if not torch.isfinite(losses).all():
                raise NonFiniteError(f"non-finite loss at epoch {epoch} step {step}: {losses.tolist()}")
            info = StepInfo(step=step, epoch=epoch, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                            generator=method_gen, layer_sizes=layer_sizes)
            opt.zero_grad(set_to_none=True)
            measured = _backward(method, losses, info, shared, head_params, recorder, strategy, z, rep, mitigation)
            if method is not None:
                clip_grad_norm(shared, method.max_norm)
            if mitigation is not None:
                mitigation.before_step()
            opt.step()
            if mitigation is not None:
                mitigation.after_step(opt)
            if method is not None and method.wants_losses_after_step:
                _losses_after_step(model, task, tasks, method, x, y, info)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            out.step_times.append(elapsed - measured)
            out.conflict_time += measured
            loss_sums += losses.detach().double().cpu()
            n_batches += 1
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{protocol.epochs}", loss=f"{float(losses.sum()):.3f}", refresh=False)
            if max_steps is not None and step >= max_steps:
                break
        if max_steps is not None and step >= max_steps:
            break  # search phase: no evaluation
        if sched is not None:
            sched.step()
        val = evaluate(model, task, tasks, splits["val"], protocol.eval_batch_size, device)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": {t: float(loss_sums[i] / max(n_batches, 1)) for i, t in enumerate(tasks)},
            "train_time_s": time.perf_counter() - t_epoch,
            "val": val,
        }
        if protocol.selection == "best_val":
            score = task.selection_score(val, tasks)
            if best is None or score > best[0]:  # ties keep the earlier epoch
                best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
        elif epoch >= protocol.epochs - protocol.last_n:  # test only on the epochs the rule reports
            record["test"] = evaluate(model, task, tasks, splits["test"], protocol.eval_batch_size, device)
        out.epochs.append(record)
        if checkpoint is not None:
            checkpoint.save(resumable, epoch + 1, step, best)
    if bar is not None:
        bar.close()
    out.conflict = recorder.summary()
    if max_steps is not None and step >= max_steps:
        return out
    if best is not None:
        score, epoch_sel, state = best
        model.load_state_dict(state)
        test = evaluate(model, task, tasks, splits["test"], protocol.eval_batch_size, device)
        val = next(e["val"] for e in out.epochs if e["epoch"] == epoch_sel)
        out.selection = {"rule": "best_val", "epoch": epoch_sel, "val_score": score}
    else:
        window = out.epochs[-protocol.last_n:]
        mean = lambda split: {k: statistics.fmean(e[split][k] for e in window) for k in window[0][split]}  # noqa: E731
        val, test = mean("val"), mean("test")
        out.selection = {"rule": "last_mean", "epochs": [e["epoch"] for e in window]}
    out.val, out.test = val, test
    return out


def check_inputs(task: Task, splits: Mapping[str, Split | MultiInputSplit]) -> None:
    """A task's splits match its declaration (``multi_input``: one MultiInputSplit per split)."""
    expected = MultiInputSplit if task.multi_input else Split
    for name, split in splits.items():
        if not isinstance(split, expected):
            raise TypeError(f"task {task.name!r} (multi_input={task.multi_input}) returned a {type(split).__name__} "
                            f"for split {name!r}; expected a {expected.__name__}")


def _forward(model: MultiTaskModel, x: torch.Tensor | Mapping[str, torch.Tensor], per_rep: bool):
    """Task outputs; for representation-gradient methods the graph is cut at the shared
    representation ``z`` (returned with its detached leaf copy ``rep``)."""
    if not per_rep:
        return forward(model, x), None, None
    if isinstance(x, Mapping):
        raise ValueError("representation-gradient methods need one shared representation per batch; a multi-input "
                         "task gives each sub-task its own inputs: use a method that works on parameter gradients")
    z = model.encode(x)
    rep = z.detach().requires_grad_()
    return model.decode(rep), z, rep


def _backward(method: Method | None, losses: torch.Tensor, info: StepInfo, shared: list[nn.Parameter],
              head_params: list[list[nn.Parameter]], recorder: ConflictRecorder, strategy: tuple[str, int],
              z: torch.Tensor | None, rep: torch.Tensor | None, mitigation: Mitigation | None = None) -> float:
    """Fill the parameters' ``.grad`` with the method's update; return the seconds spent on
    conflict statistics (excluded from the step time). A mitigation masks the task gradients
    of the shared parameters before the method and the conflict statistics see them."""
    step, measured = info.step, 0.0
    grad_kwargs = {"strategy": strategy[0], "chunk_size": strategy[1]}
    mask = mitigation.mask_task_gradients if mitigation is not None else (lambda g: g)
    if not isinstance(method, GradientAggregator):
        if recorder.due(step):
            tm = time.perf_counter()
            recorder.record(step, mask(task_gradients(list(losses), shared, retain_graph=True, **grad_kwargs)[0]))
            measured = time.perf_counter() - tm
        total = method.loss(losses, info) if isinstance(method, LossWeighting) else losses.sum()
        if not torch.isfinite(total):
            raise NonFiniteError(f"non-finite objective from method {getattr(method, 'name', 'sum')!r} at step {step}")
        total.backward()
        return measured
    grads, private = task_gradients(list(losses), shared if rep is None else [rep], head_params, **grad_kwargs)
    if rep is None:
        grads = mask(grads)
    if recorder.due(step):  # conflict statistics are defined on parameter gradients
        tm = time.perf_counter()
        recorder.record(step, grads if rep is None else mask(pullback_rows(z, grads, shared)))
        measured = time.perf_counter() - tm
    update = method.aggregate(grads, losses.detach(), info)
    if not torch.isfinite(update).all():
        raise NonFiniteError(f"non-finite update from method {method.name!r} at step {step}")
    if rep is None:
        assign_flat_grad(shared, update)
    else:
        z.backward(update.view_as(z))
    for ps, gs in zip(head_params, private):
        for p, g in zip(ps, gs):
            p.grad = g
    return measured


@torch.no_grad()
def _losses_after_step(model: MultiTaskModel, task: Task, tasks: Sequence[str], method: Method,
                       x: torch.Tensor | Mapping[str, torch.Tensor],
                       y: dict[str, torch.Tensor], info: StepInfo) -> None:
    """The same batch's task losses after the optimiser step, for methods that ask (FAMO)."""
    outputs = forward(model, x)
    method.after_step(torch.stack([task.loss(t, outputs[t], y[t]) for t in tasks]), info)


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)


def training_split(splits: Mapping[str, Split | MultiInputSplit], tasks: Sequence[str],
                   protocol: Protocol) -> Split | MultiInputSplit:
    """The part of the training split ``tasks`` train on (``max_train_samples`` applied)."""
    train = for_tasks(splits["train"], tasks)
    if protocol.max_train_samples and protocol.max_train_samples < len(train):
        train = train.subset(protocol.max_train_samples)
    return train


def total_steps(splits: Mapping[str, Split | MultiInputSplit], tasks: Sequence[str], protocol: Protocol) -> int:
    return (len(training_split(splits, tasks, protocol)) // protocol.batch_size) * protocol.epochs


def train_cell(cell: Cell, plugins: Plugins, *, data_dir: Path, device: torch.device,
               progress: bool = True, data_cache: dict | None = None, cache_dir: Path | None = None,
               checkpoints: CellCheckpoints | None = None, deterministic: bool = True,
               run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one cell and return its result record (status ok). Exceptions propagate.

    ``data_cache`` (optional) keeps loaded splits between cells of one process, keyed by
    task, version, options and data folder; the splits are read-only during training.
    ``cache_dir`` (optional) keeps work shared between cells (Recon's layer search).
    ``checkpoints``: per-epoch checkpoints to resume from and save to. ``deterministic``: also
    on CUDA (CPU runs always are). ``run_info``: how the cell was run, added to the provenance."""
    started, t_start = now_iso(), time.perf_counter()
    memory = PeakMemory(device)
    memory.start()
    set_deterministic(device, deterministic)
    seed_everything(cell.seed)

    task_cls = plugins.tasks[cell.task]
    task = task_cls(**cell.task_options)
    cache_key = (cell.task, cell.task_version, repr(sorted(cell.task_options.items())), str(data_dir))
    if data_cache is not None and cache_key in data_cache:
        splits = data_cache[cache_key]
    else:
        splits = task.load(data_dir)
        check_inputs(task, splits)
        if data_cache is not None:
            data_cache.clear()  # keep one dataset in memory at a time
            data_cache[cache_key] = splits
    protocol = Protocol(**cell.protocol)
    spec = BackboneSpec(id=cell.backbone, **cell.backbone_spec)
    method_cls = plugins.methods[cell.method_name]
    tasks = list(task.tasks)
    desc = f"{cell.method}/{cell.backbone}/s{cell.seed}"

    fits: dict[str, FitOutput] = {}
    mitigation_report = None
    if method_cls.kind == "single_task":
        for t in tasks:  # one independent model per sub-task, same seed and data order
            seed_everything(cell.seed)
            model = build_model(task, spec, [t])
            fits[t] = fit(model, task, [t], None, splits, protocol, {"every": 0}, cell.seed, device,
                          desc=f"{desc}:{t}", progress=progress,
                          checkpoint=checkpoints.model(t) if checkpoints is not None else None)
    else:
        mitigation = plugins.mitigations[cell.mitigation_name](**cell.mitigation_options)

        def search(method_name: str, steps: int, every: int, s_values: list[float], seed: int) -> dict[str, Any] | None:
            seed_everything(seed)
            base = build_model(task, spec, tasks)
            searcher = plugins.methods[method_name](n_tasks=len(tasks))
            return fit(base, task, tasks, searcher, splits, protocol, {"every": every, "s": s_values}, seed, device,
                       desc=f"{cell.mitigation}-search/{cell.backbone}", progress=progress, max_steps=steps).conflict

        identity = cell.to_dict()
        context = MitigationContext(
            tasks=tasks, total_steps=total_steps(splits, tasks, protocol), seed=cell.seed, search=search,
            cache_dir=cache_dir,
            search_identity={k: identity[k] for k in ("task", "task_version", "task_options", "protocol", "backbone_spec")},
        )
        seed_everything(cell.seed)
        model = build_model(task, spec, tasks).to(device)
        model = mitigation.prepare(model, context)
        seed_everything(cell.seed)
        method = method_cls(n_tasks=len(tasks), **cell.method_options)
        fits["joint"] = fit(model, task, tasks, method, splits, protocol, cell.conflict, cell.seed, device,
                            desc=desc, progress=progress, mitigation=mitigation,
                            checkpoint=checkpoints.model("joint") if checkpoints is not None else None)
        mitigation_report = mitigation.report()

    selection, val, test = {}, {}, {}
    for name, f in fits.items():
        selection[name] = f.selection
        val.update(f.val)
        test.update(f.test)

    step_times = [s for f in fits.values() for s in f.step_times]
    peak, peak_kind = memory.peak_mb()
    joint = fits.get("joint")
    return {
        **result_header(cell, plugins),
        "status": "ok", "reason": None,
        "tasks": tasks,
        "metric_info": {m.key: {"task": m.task, "higher_is_better": m.higher_is_better, "label": m.label or m.key}
                        for m in task.metrics},
        "metrics": {"val": val, "test": test},
        "selection": {"rule": protocol.selection, "per_model": selection},
        "curves": {name: f.epochs for name, f in fits.items()},
        "conflict": joint.conflict if joint is not None else None,
        "mitigation_report": mitigation_report,
        "cost": {
            "wall_time_s": time.perf_counter() - t_start,
            "train_steps": len(step_times),
            "step_time_ms": 1000 * statistics.fmean(step_times) if step_times else None,
            "step_time_ms_median": 1000 * statistics.median(step_times) if step_times else None,
            "conflict_time_s": sum(f.conflict_time for f in fits.values()),
            "task_gradients": joint.task_gradients if joint is not None else None,
            "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
            "params": sum(f.params for f in fits.values()),
            "params_shared": joint.params_shared if joint is not None else 0,
        },
        "provenance": provenance(cell, plugins, device, started, run_info, deterministic=deterministic,
                                 resumed_after_epoch=checkpoints.resumed if checkpoints is not None else {}),
    }


def provenance(cell: Cell, plugins: Plugins, device: torch.device, started: str,
               run_info: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Versions, code state and machine (mtlbench/train/provenance.py), how the cell was run, its seed,
    config hash, start and end time."""
    return {**collect(plugins.root, device), **(run_info or {}), **extra, "seed": cell.seed,
            "config_hash": cell.config_hash, "start_time": started, "end_time": now_iso()}


def result_header(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The identifying fields every result starts with, and the plugins' own descriptions
    (``method_info``, ``task_info``) so that readers of results need no plugin import."""
    method_cls = plugins.methods.get(cell.method_name)
    task_cls = plugins.tasks.get(cell.task)
    mitigation_cls = plugins.mitigations.get(cell.mitigation_name)
    return {
        "schema": RESULT_SCHEMA,
        "config_hash": cell.config_hash,
        "cell": cell.to_dict(),
        "suite": cell.suite, "task": cell.task, "task_version": cell.task_version,
        "backbone": cell.backbone, "method": cell.method, "method_name": cell.method_name,
        "method_version": cell.method_version,
        "method_kind": method_cls.kind if method_cls is not None else None,
        "mitigation": cell.mitigation, "mitigation_name": cell.mitigation_name,
        "mitigation_version": cell.mitigation_version, "seed": cell.seed,
        "method_info": None if method_cls is None else {
            **plugin_info(method_cls), "kind": method_cls.kind,
            "option_defaults": {k: _jsonable(v) for k, v in method_cls.option_defaults().items()},
        },
        "mitigation_info": None if mitigation_cls is None else plugin_info(mitigation_cls),
        "task_info": None if task_cls is None else {
            **plugin_info(task_cls),
            "delta_m_convention": task_cls.delta_m_convention, "main_metrics": dict(task_cls.main_metrics),
        },
    }


def plugin_info(cls: type) -> dict[str, Any]:
    """What a result records of the plugin that produced it, so readers need no plugin import."""
    return {"version": str(cls.version), "description": cls.description, "citation": cls.citation,
            "reference": cls.reference, "roles": sorted(cls.roles)}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can store it, else its repr (an option default may be any object)."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)
    return value


def failed_result(cell: Cell, plugins: Plugins, device: torch.device, error: BaseException, started: str,
                  run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-6))
    return {
        **result_header(cell, plugins),
        "status": "failed",
        "reason": f"{type(error).__name__}: {error}"[:500],
        "traceback": tb[-4000:],
        "metrics": {},
        "provenance": provenance(cell, plugins, device, started, run_info),
    }

