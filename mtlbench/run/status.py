"""`mtlbench status`: the state of every cell of a grid, summarised per task and method.

States: ``done`` (an ok result with the current config hash, task version and schema),
``failed`` (with its reason), ``running`` (a live runner holds the cell's lock), ``stale`` (a
result written for another config, task version or schema: it will be re-run) and
``pending`` (no result yet; "resumes" when a checkpoint of an interrupted run exists; for a
cell submitted to SLURM without waiting, where its job stands: queued, or ended without a
result).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from mtlbench.core.cell import Cell
from mtlbench.run.job import log_path
from mtlbench.run.locks import live_holder
from mtlbench.run.slurm import ENDED_STATES, job_states, submitted_job
from mtlbench.run.store import CellState, ResultStore
from mtlbench.train.checkpoint import CHECKPOINT_DIR

STATES = ("done", "failed", "running", "pending", "stale")
GROUP = ("suite", "task", "backbone", "method", "mitigation")


def cell_states(cells: list[Cell], results: Path, lock_stale_s: float = 600.0) -> list[CellState]:
    store = ResultStore(results)
    out: list[CellState] = []
    queued: dict[int, str] = {}  # index in out -> the SLURM job the cell was submitted as (--no-wait)
    for cell in cells:
        s = store.state(cell)
        if s.state != "done":
            holder = live_holder(store.root, cell.relpath, lock_stale_s)
            if holder is not None:
                s = CellState(cell, s.path, "running", holder.describe())
            elif s.state == "pending" and (store.root / CHECKPOINT_DIR / cell.relpath.with_suffix("")).is_dir():
                s = CellState(cell, s.path, "pending", "interrupted: resumes from its checkpoint")
            if s.state == "pending" and (job := submitted_job(store.root, cell.relpath)) is not None:
                queued[len(out)] = job
        out.append(s)
    if queued:  # where their SLURM jobs stand: one question to slurmctld for all of them
        known = job_states()
        for i, job in queued.items():
            out[i] = replace(out[i], reason=_job_reason(job, known.get(job), out[i].reason))
    return out


def _job_reason(job: str, state: str | None, reason: str) -> str:
    """A pending cell's reason, given the state of the SLURM job it was submitted as."""
    after = f"; {reason}" if reason else ""
    if state is None:
        return (
            f"submitted as slurm job {job}, which the scheduler no longer lists and which wrote no result: "
            f"`mtlbench run` runs it again{after}"
        )
    if state in ENDED_STATES:
        return f"slurm job {job} ended as {state} without a result: `mtlbench run` runs it again{after}"
    return f"queued as slurm job {job} ({state}){after}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(v.ljust(w) if i < len(GROUP) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in rows
    ]


def grid_status(cells: list[Cell], results: Path, lock_stale_s: float = 600.0, every_cell: bool = False) -> str:
    states = cell_states(cells, results, lock_stale_s)
    groups: dict[tuple, Counter] = {}
    for s in states:
        groups.setdefault(tuple(str(getattr(s.cell, k)) for k in GROUP), Counter())[s.state] += 1
    lines = _table([list(GROUP) + list(STATES)] + [list(key) + [str(c[st]) for st in STATES] for key, c in groups.items()])
    for state in ("failed", "running", "stale", "pending"):
        listed = [s for s in states if s.state == state and (s.reason or state != "pending")]  # pending: interrupted ones
        if not listed:
            continue
        lines.append(f"\n{state} ({len(listed)}):")
        for s in listed:
            log = log_path(results, s.cell)
            where = f"  [log: {log}]" if state == "failed" and log.exists() else ""
            lines.append(f"  {s.cell.short()}  {s.reason}{where}")
    if every_cell:
        lines.append("\nevery cell:")
        lines.extend(f"  {s.state:<8} {s.cell.short()}" for s in states)
    total = Counter(s.state for s in states)
    lines.append(f"\n{len(states)} cells: " + ", ".join(f"{total[st]} {st}" for st in STATES if total[st]))
    return "\n".join(lines)
