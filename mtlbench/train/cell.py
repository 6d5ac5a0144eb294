"""Training of one cell: load its data, build its model(s), let its mitigation prepare the
model (with any work before training, such as Recon's search phase), train with
:class:`~mtlbench.train.trainer.Trainer`, and assemble the result record
(:mod:`mtlbench.train.record`)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mtlbench.backbones.build import BackboneSpec, build_multitask_model
from mtlbench.core.cell import Cell
from mtlbench.core.result import Conflict, OkResult
from mtlbench.core.spec import ConflictSettings
from mtlbench.datasets.splits import MultiInputSplit, Split
from mtlbench.plugin.method import build_method
from mtlbench.plugin.mitigation import MitigationContext
from mtlbench.plugin.model import MultiTaskModel
from mtlbench.plugin.task import Task
from mtlbench.train.checkpoint import CellCheckpoints
from mtlbench.train.provenance import PeakMemory, now_iso
from mtlbench.train.record import cost, failed_result, ok_result, provenance
from mtlbench.train.trainer import (  # noqa: F401  (NonFiniteError and FitOutput are part of this module's API)
    FitOutput,
    NonFiniteError,
    Trainer,
    seed_everything,
    set_deterministic,
    total_steps,
)

if TYPE_CHECKING:
    from mtlbench.grid.plugins import Plugins

__all__ = ["train_cell", "failed_result", "build_model", "check_inputs", "NonFiniteError"]


def build_model(task: Task, spec: BackboneSpec, tasks: Sequence[str]) -> MultiTaskModel:
    return build_multitask_model(spec, task.input_shape, task.representation, tasks, task.build_head)


def check_inputs(task: Task, splits: Mapping[str, Split | MultiInputSplit]) -> None:
    """A task's splits match its declaration (``multi_input``: one MultiInputSplit per split)."""
    expected = MultiInputSplit if task.multi_input else Split
    for name, split in splits.items():
        if not isinstance(split, expected):
            raise TypeError(
                f"task {task.name!r} (multi_input={task.multi_input}) returned a {type(split).__name__} "
                f"for split {name!r}; expected a {expected.__name__}"
            )


class CellRun:
    """One cell being trained: its task, data, protocol and backbone, and where it runs."""

    def __init__(
        self,
        cell: Cell,
        plugins: Plugins,
        *,
        data_dir: Path,
        device: torch.device,
        progress: bool,
        data_cache: dict | None,
        cache_dir: Path | None,
        checkpoints: CellCheckpoints | None,
    ) -> None:
        self.cell, self.plugins, self.device, self.progress = cell, plugins, device, progress
        self.cache_dir, self.checkpoints = cache_dir, checkpoints
        self.task = plugins.tasks[cell.task](**cell.task_options)
        self.splits = load_splits(self.task, cell, data_dir, data_cache)
        self.protocol = cell.protocol
        self.spec = cell.backbone_spec
        self.tasks = list(self.task.tasks)
        self.desc = f"{cell.method}/{cell.backbone}/s{cell.seed}"

    def trainer(
        self,
        model: MultiTaskModel,
        tasks: Sequence[str],
        method: Any,
        conflict: ConflictSettings,
        seed: int,
        desc: str,
        checkpoint_name: str | None = None,
        mitigation: Any = None,
    ) -> Trainer:
        checkpoint = self.checkpoints.model(checkpoint_name) if self.checkpoints is not None and checkpoint_name else None
        return Trainer(
            model,
            self.task,
            tasks,
            method,
            self.splits,
            self.protocol,
            conflict,
            seed,
            self.device,
            mitigation=mitigation,
            checkpoint=checkpoint,
            desc=desc,
            progress=self.progress,
        )

    def single_task(self) -> dict[str, FitOutput]:
        """One independent model per sub-task, same seed and data order."""
        fits = {}
        for t in self.tasks:
            seed_everything(self.cell.seed)
            model = build_model(self.task, self.spec, [t])
            fits[t] = self.trainer(model, [t], None, ConflictSettings(every=0), self.cell.seed, f"{self.desc}:{t}", t).fit()
        return fits

    def joint(self) -> tuple[dict[str, FitOutput], dict[str, Any] | None]:
        """The shared model, prepared by the cell's mitigation, trained with the cell's method."""
        cell = self.cell
        mitigation = self.plugins.mitigations[cell.mitigation_name](**cell.mitigation_options)
        identity = cell.to_dict()
        context = MitigationContext(
            tasks=self.tasks,
            total_steps=total_steps(self.splits, self.tasks, self.protocol),
            seed=cell.seed,
            search=self.search,
            cache_dir=self.cache_dir,
            search_identity={k: identity[k] for k in ("task", "task_version", "task_options", "protocol", "backbone_spec")},
        )
        seed_everything(cell.seed)
        model = build_model(self.task, self.spec, self.tasks).to(self.device)
        model = mitigation.prepare(model, context)
        seed_everything(cell.seed)
        method = build_method(self.plugins.methods, cell.method_name, len(self.tasks), cell.method_options)
        fit = self.trainer(model, self.tasks, method, cell.conflict, cell.seed, self.desc, "joint", mitigation).fit()
        return {"joint": fit}, mitigation.report()

    def reference_step(self, warmup: int = 2, steps: int = 5) -> tuple[str, float] | None:
        """The host's reference step in ms: the project's reference method (role ``reference``,
        EW) on a fresh copy of this cell's model, its batch and protocol, median of ``steps``
        steps after ``warmup`` — what makes step times comparable across machines (a run's step
        time over this is a ratio to EW measured on the same host). None when the project has no
        reference method or the model is single-task only."""
        names = self.plugins.methods.with_role("reference")
        if not names or len(self.tasks) < 2:
            return None
        seed_everything(self.cell.seed)
        model = build_model(self.task, self.spec, self.tasks)
        method = self.plugins.methods[names[0]](n_tasks=len(self.tasks))
        trainer = self.trainer(model, self.tasks, method, ConflictSettings(every=0), self.cell.seed, f"{self.desc}:host-ref")
        trainer.progress = False
        times = trainer.fit(max_steps=min(warmup + steps, trainer.total_steps)).step_times[warmup:]
        return (names[0], 1000 * statistics.median(times)) if times else None

    def search(self, method: str, steps: int, every: int, s_values: list[float], seed: int) -> Conflict | None:
        """The :class:`~mtlbench.plugin.mitigation.SearchPhase` this cell offers its mitigation."""
        seed_everything(seed)
        base = build_model(self.task, self.spec, self.tasks)
        searcher = self.plugins.methods[method](n_tasks=len(self.tasks))
        trainer = self.trainer(
            base,
            self.tasks,
            searcher,
            ConflictSettings(every=every, s=tuple(s_values)),
            seed,
            f"{self.cell.mitigation}-search/{self.cell.backbone}",
        )
        return trainer.fit(max_steps=steps).conflict


def load_splits(task: Task, cell: Cell, data_dir: Path, data_cache: dict | None) -> Mapping[str, Any]:
    """The task's splits; ``data_cache`` (optional) keeps them between cells of one process,
    keyed by task, version, options and data folder (the splits are read-only during training)."""
    cache_key = (cell.task, cell.task_version, repr(sorted(cell.task_options.items())), str(data_dir))
    if data_cache is not None and cache_key in data_cache:
        task.attach(data_cache[cache_key])
        return data_cache[cache_key]
    splits = task.load(data_dir)
    check_inputs(task, splits)
    task.attach(splits)
    if data_cache is not None:
        data_cache.clear()  # keep one dataset in memory at a time
        data_cache[cache_key] = splits
    return splits


def train_cell(
    cell: Cell,
    plugins: Plugins,
    *,
    data_dir: Path,
    device: torch.device,
    progress: bool = True,
    data_cache: dict | None = None,
    cache_dir: Path | None = None,
    checkpoints: CellCheckpoints | None = None,
    deterministic: bool = True,
    run_info: dict[str, Any] | None = None,
    outputs: Path | None = None,
) -> OkResult:
    """Train one cell and return its result record (status ok). Exceptions propagate.

    ``data_cache``: see :func:`load_splits`. ``cache_dir`` (optional) keeps work shared between
    cells (Recon's layer search). ``checkpoints``: per-epoch checkpoints to resume from and save
    to. ``deterministic``: also on CUDA (CPU runs always are). ``run_info``: how the cell was
    run, added to the provenance. ``outputs``: the results folder being written (not counted as an
    uncommitted change of the code in the provenance)."""
    started, t_start = now_iso(), time.perf_counter()
    memory = PeakMemory(device)
    memory.start()
    set_deterministic(device, deterministic)
    seed_everything(cell.seed)
    run = CellRun(
        cell,
        plugins,
        data_dir=data_dir,
        device=device,
        progress=progress,
        data_cache=data_cache,
        cache_dir=cache_dir,
        checkpoints=checkpoints,
    )
    if plugins.methods[cell.method_name].kind == "single_task":
        fits, report = run.single_task(), None
    else:
        fits, report = run.joint()
    info = provenance(
        cell,
        plugins,
        device,
        started,
        run_info,
        outputs,
        deterministic=deterministic,
        resumed_after_epoch=checkpoints.resumed if checkpoints is not None else {},
    )
    spent = cost(fits, memory, t_start)  # the run's own wall time and memory, before the reference step
    reference = run.reference_step()
    if reference is not None:
        spent = spent.model_copy(update={"reference_step_ms": reference[1], "reference_method": reference[0]})
    return ok_result(cell, plugins, run.task, fits, report, cost=spent, provenance=info)
