"""The result record of one cell: what the trainer measured, assembled into the result file's
shape (an ``ok`` result, or a ``failed`` one with its reason), with provenance."""

from __future__ import annotations

import json
import statistics
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtlbench.core.cell import RESULT_SCHEMA, Cell
from mtlbench.core.registry import Plugin
from mtlbench.core.result import Cost, FailedResult, OkResult
from mtlbench.plugin.mitigation import Mitigation
from mtlbench.plugin.task import Task
from mtlbench.train.provenance import PeakMemory, collect, now_iso
from mtlbench.train.trainer import FitOutput

if TYPE_CHECKING:
    from mtlbench.grid.plugins import Plugins


def ok_result(
    cell: Cell,
    plugins: Plugins,
    task: Task,
    fits: dict[str, FitOutput],
    mitigation_report: dict[str, Any] | None,
    *,
    cost: Cost,
    provenance: dict[str, Any],
) -> OkResult:
    """The record of a finished cell (status ok), checked against the result file's definition.
    ``fits``: one output per trained model (``joint``, or one per sub-task for the single-task
    baseline)."""
    selection: dict[str, Any] = {}
    val: dict[str, float] = {}
    test: dict[str, float] = {}
    for name, f in fits.items():
        selection[name] = f.selection
        val.update(f.val)
        test.update(f.test)
    joint = fits.get("joint")
    return OkResult.model_validate(
        {
            **result_header(cell, plugins),
            "status": "ok",
            "reason": None,
            "tasks": list(task.tasks),
            "metric_info": {
                m.key: {"task": m.task, "higher_is_better": m.higher_is_better, "label": m.label or m.key} for m in task.metrics
            },
            "metrics": {"val": val, "test": test},
            "selection": {"rule": cell.protocol.selection, "per_model": selection},
            "curves": {name: f.epochs for name, f in fits.items()},
            "conflict": joint.conflict if joint is not None else None,
            "mitigation_report": mitigation_report,
            "cost": cost,
            "provenance": provenance,
        }
    )


def cost(fits: dict[str, FitOutput], memory: PeakMemory, t_start: float) -> Cost:
    """What the run cost (the host's reference step is added by the caller:
    :meth:`mtlbench.train.cell.CellRun.reference_step`)."""
    step_times = [s for f in fits.values() for s in f.step_times]
    peak, peak_kind = memory.peak_mb()
    joint = fits.get("joint")
    return Cost.model_validate({
        "wall_time_s": time.perf_counter() - t_start,
        "train_steps": len(step_times),
        "step_time_ms": 1000 * statistics.fmean(step_times) if step_times else None,
        "step_time_ms_median": 1000 * statistics.median(step_times) if step_times else None,
        "conflict_time_s": sum(f.conflict_time for f in fits.values()),
        "task_gradients": joint.task_gradients if joint is not None else None,
        "peak_memory_mb": peak,
        "peak_memory_kind": peak_kind,
        "params": sum(f.params for f in fits.values()),
        "params_shared": joint.params_shared if joint is not None else 0,
    })  # fmt: skip


def provenance(
    cell: Cell,
    plugins: Plugins,
    device: torch.device,
    started: str,
    run_info: dict[str, Any] | None = None,
    outputs: Path | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Versions, code state and machine (mtlbench/train/provenance.py), how the cell was run, its
    seed, config hash, start and end time."""
    return {
        **collect(plugins.root, device, outputs, (run_info or {}).get("git")),
        **(run_info or {}),
        **extra,
        "seed": cell.seed,
        "config_hash": cell.config_hash,
        "start_time": started,
        "end_time": now_iso(),
    }


def result_header(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The identifying fields every result starts with, and the plugins' own descriptions
    (``method_info``, ``mitigation_info``, ``task_info``) so that readers of results need no
    plugin import."""
    method_cls = plugins.methods.get(cell.method_name)
    task_cls = plugins.tasks.get(cell.task)
    mitigation_cls = plugins.mitigations.get(cell.mitigation_name)
    return {
        "schema": RESULT_SCHEMA,
        "config_hash": cell.config_hash,
        "cell": cell.to_dict(),
        "suite": cell.suite,
        "task": cell.task,
        "task_version": cell.task_version,
        "backbone": cell.backbone,
        "method": cell.method,
        "method_name": cell.method_name,
        "method_version": cell.method_version,
        "method_kind": method_cls.kind if method_cls is not None else None,
        "mitigation": cell.mitigation,
        "mitigation_name": cell.mitigation_name,
        "mitigation_version": cell.mitigation_version,
        "seed": cell.seed,
        "method_info": None
        if method_cls is None
        else {
            **plugin_info(method_cls),
            "kind": method_cls.kind,
            "option_defaults": {k: _jsonable(v) for k, v in method_cls.option_defaults().items()},
        },
        "mitigation_info": None if mitigation_cls is None else mitigation_info(mitigation_cls),
        "task_info": None
        if task_cls is None
        else {
            **plugin_info(task_cls),
            "delta_m_convention": task_cls.delta_m_convention,
            "main_metrics": dict(task_cls.main_metrics),
        },
    }


def plugin_info(cls: type[Plugin]) -> dict[str, Any]:
    """What a result records of the plugin that produced it, so readers need no plugin import."""
    return {
        "version": str(cls.version),
        "description": cls.description,
        "citation": cls.citation,
        "reference": cls.reference,
        "roles": sorted(cls.roles),
    }


def mitigation_info(cls: type[Mitigation]) -> dict[str, Any]:
    """:func:`plugin_info` and the mitigation's declared claims (source: its citation unless a
    claim names another) and report tables."""
    claims = [{**c.model_dump(mode="json"), "source": c.source or cls.citation} for c in cls.claims]
    return {**plugin_info(cls), "claims": claims, "report_tables": dict(cls.report_tables)}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can store it, else its repr (an option default may be any object)."""
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)
    return value


def failed_result(
    cell: Cell,
    plugins: Plugins,
    device: torch.device,
    error: BaseException,
    started: str,
    run_info: dict[str, Any] | None = None,
    outputs: Path | None = None,
    *,
    hint: str = "",
    log_tail: str | None = None,
) -> FailedResult:
    """The record of a cell that failed with ``error``: its reason (plus ``hint``, what to change)
    and the traceback, or ``log_tail`` where the error happened in another process."""
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-6))
    return FailedResult.model_validate(
        {
            **result_header(cell, plugins),
            "status": "failed",
            "reason": f"{type(error).__name__}: {error}"[:500] + hint,
            "traceback": log_tail if log_tail is not None else tb[-4000:],
            "metrics": {},
            "provenance": provenance(cell, plugins, device, started, run_info, outputs),
        }
    )
