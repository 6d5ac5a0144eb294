"""Running one cell wherever an executor puts it: take the cell's lock, check nothing changed
since the grid was planned, train with per-epoch checkpoints and a log file, write the result
(``ok`` or ``failed`` with the reason), clean up, release the lock.

The same function runs in-process (the default sequential path), in a local pool worker and
inside a SLURM job, so every executor gets the same locking, resume and failure isolation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mtlbench.core.cell import Cell
from mtlbench.core.files import remove_temp_files
from mtlbench.core.result import FailedResult, OkResult
from mtlbench.run.locks import CellLock, slurm_job_id
from mtlbench.run.store import ResultStore

if TYPE_CHECKING:  # torch is imported where a cell runs, not where a grid is planned
    import torch

    from mtlbench.grid.plugins import Plugins

log = logging.getLogger("mtlbench.cell")


@dataclass(frozen=True)
class CellJob:
    """Everything a process needs to run one cell (plain data: it is pickled to workers and jobs)."""

    cell: Cell
    root: Path  # folder of benchmark.toml: its tasks/ and baselines/ are the plugins
    results: Path
    data_dir: Path
    device: str = "auto"
    threads: int = 0
    processes: int = 1  # ranks training the cell together (mtlbench.train.distributed)
    deterministic: bool = True
    checkpoint: bool = True
    lock_stale_s: float = 600.0
    progress: bool = False
    executor: str = "local"
    planned: tuple[int, int] | None = None  # (inode, mtime_ns) of the result file when planned
    # the project's git commit and dirty flag when the grid was planned: the code the cells run
    # (read per cell instead, an edit made while a long grid runs would be recorded for cells
    # that ran the code loaded before it)
    code_state: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return self.cell.short()


@dataclass
class Outcome:
    """What happened to a job: ``ok``, ``failed``, ``busy`` (another runner holds the cell) or
    ``skipped`` (another runner wrote its result after the grid was planned)."""

    key: str
    status: str
    message: str = ""
    wall_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class WorkerDied(RuntimeError):
    """The process running a cell ended without reporting (killed, out of memory, crashed)."""


def log_path(results: Path, cell: Cell) -> Path:
    """The cell's log file, next to its result file."""
    return Path(results) / cell.relpath.with_suffix(".log")


def file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def cell_log(path: Path) -> Iterator[logging.Logger]:
    """Append the ``mtlbench`` logger's records to ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("mtlbench")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield log
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@contextlib.contextmanager
def holding(job: CellJob, lock_job: str | None = None) -> Iterator[Outcome | None]:
    """Hold the cell's lock for the block; yields an Outcome instead when the cell must not run
    (another runner holds it, or wrote its result after planning)."""
    lock = CellLock(job.results, job.cell.relpath, job.lock_stale_s, job=lock_job)
    if not lock.acquire():
        yield Outcome(job.key, "busy", f"running elsewhere ({lock.holder.describe() if lock.holder else '?'})")
        return
    try:
        store = ResultStore(job.results)
        if file_state(store.path(job.cell)) != job.planned:
            yield Outcome(job.key, "skipped", "another runner wrote its result meanwhile")
            return
        remove_temp_files(store.path(job.cell))
        if lock.broken:
            with cell_log(log_path(job.results, job.cell)):
                log.warning("%s", lock.broken)
        yield None
    finally:
        lock.release()


_PLUGINS: dict[Path, "Plugins"] = {}


def plugins_of(root: Path) -> "Plugins":
    """The plugins of a project folder, discovered once per process."""
    from mtlbench.grid.plugins import discover

    root = Path(root).resolve()
    if root not in _PLUGINS:
        _PLUGINS[root] = discover(root)
    return _PLUGINS[root]


def resolve_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_info(job: CellJob, device: "torch.device") -> dict[str, Any]:
    info: dict[str, Any] = {"executor": job.executor, "run_device": str(device)}
    if job.code_state is not None:
        info["git"] = dict(job.code_state)
    if slurm_job_id():
        info["slurm_job_id"] = slurm_job_id()
    return info


def execute_cell(job: CellJob, data_cache: dict | None = None, lock_job: str | None = None, joined: Any = None) -> Outcome:
    """Run ``job`` in this process and write its result. Training errors (non-finite loss,
    CUDA out of memory, any exception) become a ``failed`` result; ``KeyboardInterrupt`` and
    ``SystemExit`` (a pre-empted job) propagate and leave the checkpoint for a resume.
    ``joined``: this is rank 0 of ranks a scheduler started and that already share a process
    group (one SLURM job with several tasks); ``joined(go)`` tells them whether the cell runs."""
    t0 = time.perf_counter()
    with holding(job, lock_job) as refused:
        if joined is not None:
            joined(refused is None)
        if refused is not None:
            return refused
        with cell_log(log_path(job.results, job.cell)):
            if joined is not None:
                from mtlbench.run.ranks import rank_device, scheduler_explain

                outcome = _train_and_write(job, data_cache, explain=scheduler_explain, device=rank_device(job, 0))
            elif job.processes > 1:
                from mtlbench.run.ranks import train_and_write_ranks

                outcome = train_and_write_ranks(job, data_cache)
            else:
                outcome = _train_and_write(job, data_cache)
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def _train_and_write(
    job: CellJob, data_cache: dict | None, explain: Any = None, device: Any = None, before: Any = None
) -> Outcome:
    """Train the cell here and write its result. For rank 0 of a run over several processes
    (mtlbench.run.ranks): ``device`` is this rank's, ``before()`` joins the other ranks (a
    failure to is the cell's failure) and ``explain()`` adds to a failure's reason what the
    other ranks reported."""
    import torch

    from mtlbench.train.cell import failed_result, train_cell
    from mtlbench.train.checkpoint import CellCheckpoints
    from mtlbench.train.provenance import now_iso

    cell = job.cell
    plugins = plugins_of(job.root)
    device = resolve_device(job.device) if device is None else device
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    checkpoints = CellCheckpoints(job.results, cell, enabled=job.checkpoint)
    info = run_info(job, device)
    if job.processes > 1:
        info["world_size"] = job.processes
    started = now_iso()
    log.info(
        "start %s (config %s) on %s, host %s, pid %d, executor %s%s",
        cell.short(),
        cell.config_hash,
        device,
        socket.gethostname(),
        os.getpid(),
        job.executor,
        ", resuming from a checkpoint" if checkpoints.exists() else "",
    )
    result: OkResult | FailedResult
    try:
        if before is not None:
            before()
        result = train_cell(
            cell,
            plugins,
            data_dir=job.data_dir,
            device=device,
            progress=job.progress,
            data_cache=data_cache,
            cache_dir=Path(job.results) / ".cache",
            checkpoints=checkpoints,
            deterministic=job.deterministic,
            run_info=info,
            outputs=job.results,
        )
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in result.metrics.test.items())
        outcome = Outcome(job.key, "ok", metrics, details={"resumed": checkpoints.resumed})
    except Exception as e:  # recorded, the grid goes on
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        if oom:
            torch.cuda.empty_cache()
        hint = " (lower runs_per_device or the batch size)" if oom else ""
        if explain is not None:
            hint += explain()
        failed = failed_result(cell, plugins, device, e, started, info, job.results, hint=hint)
        log.error("failed: %s\n%s", failed.reason, failed.traceback)
        outcome, result = Outcome(job.key, "failed", failed.reason or ""), failed
    path = ResultStore(job.results).write(cell, result)
    checkpoints.clear()
    log.info("result written (%s): %s", result.status, path)
    return outcome


def clear_leftover_checkpoint(job: CellJob) -> None:
    """Remove the checkpoint of a cell whose result was written but whose run was killed before
    it could remove the checkpoint itself."""
    from mtlbench.train.checkpoint import CellCheckpoints

    checkpoints = CellCheckpoints(job.results, job.cell)
    if not checkpoints.folder.exists():
        return
    lock = CellLock(job.results, job.cell.relpath, job.lock_stale_s)
    if lock.acquire():
        try:
            if ResultStore(job.results).state(job.cell).state == "done":
                checkpoints.clear()
        finally:
            lock.release()


def record_failure(job: CellJob, reason: str, lock_job: str | None = None) -> Outcome:
    """Write a ``failed`` result for a cell whose process died without reporting. Its checkpoint
    is kept: the death was not the training's doing, so ``--retry-failed`` resumes it.
    ``lock_job``: the finished cluster job that ran the cell (its lock is dead wherever it ran)."""
    import torch

    from mtlbench.train.cell import failed_result
    from mtlbench.train.provenance import now_iso

    with holding(job, lock_job) as refused:
        if refused is not None:
            return refused
        path = log_path(job.results, job.cell)
        with cell_log(path):
            log.error("%s", reason)
        result = failed_result(
            job.cell,
            plugins_of(job.root),
            torch.device("cpu"),
            WorkerDied(reason),
            now_iso(),
            {"executor": job.executor, "recorded_by": "runner"},
            job.results,
            log_tail="last lines of the cell's log:\n" + "".join(path.read_text(encoding="utf-8").splitlines(True)[-20:]),
        )
        ResultStore(job.results).write(job.cell, result)
    return Outcome(job.key, "failed", result.reason or "")
