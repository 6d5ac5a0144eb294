"""Running a grid: leave out finished cells and cells another runner holds, hand the rest to
an executor (mtlbench/run/), report each outcome as it arrives."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mtlbench.core.code_state import git_state
from mtlbench.grid.config import Benchmark, Cell
from mtlbench.grid.executor import ExecutorOptions
from mtlbench.run.executors import make_executor
from mtlbench.run.job import CellJob, Outcome, clear_leftover_checkpoint, file_state
from mtlbench.run.locks import live_holder
from mtlbench.run.store import CellState, ResultStore


@dataclass
class RunSummary:
    total: int
    skipped_done: int
    skipped_failed: int
    running_elsewhere: int
    ran: int
    failed: int
    not_run: int  # taken or finished by another runner after planning
    wall_time_s: float


def plan(
    cells: list[Cell], store: ResultStore, retry_failed: bool = False, lock_stale_s: float = 600.0
) -> tuple[list[CellState], list[CellState]]:
    """Split cells into (to run, skipped). Done cells are skipped, failed ones unless retried,
    and cells whose lock a live runner holds (state ``running``)."""
    todo, skipped = [], []
    for cell in cells:
        s = store.state(cell)
        if s.state == "done" or (s.state == "failed" and not retry_failed):
            skipped.append(s)
            continue
        holder = live_holder(store.root, cell.relpath, lock_stale_s)
        if holder is not None:
            skipped.append(CellState(cell, s.path, "running", holder.describe()))
        else:
            todo.append(s)
    return todo, skipped


def run_cells(
    bench: Benchmark,
    cells: list[Cell],
    results: Path,
    *,
    data_dir: Path,
    options: ExecutorOptions | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    options = options or ExecutorOptions()
    executor = make_executor(options, results, echo)  # bad executor options fail before anything runs
    store = ResultStore(results)
    todo, skipped = plan(cells, store, retry_failed, options.lock_stale_s)
    n = Counter(s.state for s in skipped)
    echo(
        f"{len(cells)} cells: {n['done']} done, {n['failed']} failed"
        f"{' (re-run them with --retry-failed)' if n['failed'] else ''}, "
        + (f"{n['running']} running elsewhere, " if n["running"] else "")
        + f"{len(todo)} to run -> {results}"
    )
    t0 = time.perf_counter()
    tally: Counter = Counter()
    for s in skipped:
        if s.state == "done":
            clear_leftover_checkpoint(_job(bench, s, results, data_dir, options, progress))
    if todo:
        echo(f"executor: {executor.describe()}")
        state = git_state(bench.root, results)  # once, as the grid starts: what every cell of it runs
        jobs = [_job(bench, s, results, data_dir, options, progress, state) for s in todo]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="grid", unit="cell", dynamic_ncols=True)
            echo = bar.write  # keep messages above the bars

        def report(outcome: Outcome) -> None:
            tally[outcome.status] += 1
            echo(describe_outcome(outcome))
            if bar is not None:
                bar.update(1)

        try:
            executor.run(jobs, report)
        finally:
            if bar is not None:
                bar.close()
    return RunSummary(
        len(cells),
        n["done"],
        n["failed"],
        n["running"],
        tally["ok"] + tally["failed"],
        tally["failed"],
        tally["busy"] + tally["skipped"],
        time.perf_counter() - t0,
    )


def _job(
    bench: Benchmark, s: CellState, results: Path, data_dir: Path, options: ExecutorOptions, progress: bool,
    code_state: dict[str, Any] | None = None,
) -> CellJob:  # fmt: skip
    return CellJob(
        cell=s.cell,
        root=bench.root,
        results=Path(results),
        data_dir=Path(data_dir),
        threads=options.threads,
        processes=options.processes_per_run,
        deterministic=options.deterministic,
        checkpoint=options.checkpoint,
        lock_stale_s=options.lock_stale_s,
        progress=progress,
        executor=options.kind,
        planned=file_state(s.path),
        code_state=code_state,
    )


def describe_outcome(o: Outcome) -> str:
    if o.status == "ok":
        resumed = o.details.get("resumed") or {}
        note = ("  resumed after epoch " + ", ".join(f"{k}:{v}" for k, v in resumed.items())) if resumed else ""
        return f"ok      {o.key}  {o.message}  ({o.wall_s:.1f} s){note}"
    label = {"failed": "FAILED", "busy": "busy", "skipped": "skipped"}.get(o.status, o.status)
    return f"{label:<7} {o.key}  {o.message}"
