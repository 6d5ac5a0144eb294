"""The local executor: cells run on this machine, one at a time in-process, or in a pool of
worker processes fed from a queue of device slots.

Slots are the visible devices repeated ``runs_per_device`` times (``cuda:0, cuda:1, cuda:0,
cuda:1`` for two GPUs and k = 2); with no GPU the slot is the CPU. A single slot runs cells
in this process (no start-up cost, progress bars per epoch); several slots start one worker
process per slot (``spawn``: CUDA-safe), each bound to its slot's device and reused for
every cell it gets, so torch is imported once per worker. A worker that dies (killed, out of
host memory, a crash in native code) gets its cell recorded as ``failed`` and is replaced;
workers exit with the runner (Linux parent-death signal, or a watchdog elsewhere).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Callable

from mtlbench.core.errors import ConfigError
from mtlbench.grid.executor import ExecutorOptions
from mtlbench.run.job import CellJob, Outcome, execute_cell, record_failure


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_slots(options: ExecutorOptions, n_gpus: int) -> list[str]:
    """The queue of device ids workers are fed from: each device ``runs_per_device`` times, interleaved."""
    devices = list(options.devices)
    if devices == ["auto"]:
        devices = [f"cuda:{i}" for i in range(n_gpus)] or ["cpu"]
    elif devices == ["cuda"]:
        if not n_gpus:
            raise ConfigError('executor.devices = "cuda": no CUDA device is visible here; use "auto" or "cpu"')
        devices = [f"cuda:{i}" for i in range(n_gpus)]
    for d in devices:
        if d.startswith("cuda:") and int(d.split(":")[1]) >= n_gpus:
            raise ConfigError(
                f"executor.devices: {d} is not visible here ({n_gpus} CUDA device(s)); "
                f"valid: {', '.join(f'cuda:{i}' for i in range(n_gpus)) or 'cpu'}"
            )
    return [d for _ in range(options.runs_per_device) for d in devices]


class LocalExecutor:
    """Runs jobs on this machine; ``report`` is called once per job, in completion order."""

    def __init__(self, options: ExecutorOptions, echo: Callable[[str], None] = print) -> None:
        self.options = options
        self.echo = echo
        self.slots = device_slots(options, visible_gpus())

    def describe(self) -> str:
        if len(self.slots) == 1:
            return f"local, in-process on {self.slots[0]}"
        return f"local pool, {len(self.slots)} workers on {', '.join(self.slots)}"

    def prepare(self, job: CellJob) -> CellJob:
        threads = self.options.threads
        processes = len(self.slots) * self.options.processes_per_run  # every rank of every slot
        if processes > 1 and threads == 0:
            threads = max(1, (os.cpu_count() or 1) // processes)
        return replace(
            job,
            device=self.slots[0] if len(self.slots) == 1 else "auto",
            threads=threads,
            progress=job.progress and len(self.slots) == 1,
        )

    def run(self, jobs: list[CellJob], report: Callable[[Outcome], None]) -> None:
        jobs = [self.prepare(j) for j in jobs]
        if len(self.slots) == 1:
            self._run_in_process(jobs, report)
        else:
            Pool(self.slots, report).run(jobs)

    def _run_in_process(self, jobs: list[CellJob], report: Callable[[Outcome], None]) -> None:
        import torch

        threads = torch.get_num_threads()
        data_cache: dict = {}
        try:
            for job in jobs:
                report(execute_cell(job, data_cache))
        finally:
            torch.set_num_threads(threads)


@dataclass
class _Worker:
    device: str
    process: mp.process.BaseProcess
    conn: Connection
    job: CellJob | None = None


class Pool:
    """Worker processes, one per device slot, fed jobs one at a time."""

    def __init__(self, slots: list[str], report: Callable[[Outcome], None]) -> None:
        self.free_slots = deque(slots)
        self.report = report
        self.ctx = mp.get_context("spawn")

    def _start(self) -> _Worker:
        device = self.free_slots.popleft()
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(
            target=worker_main, args=(child, device, os.getpid()), daemon=True, name=f"mtlbench-worker-{device}"
        )
        process.start()
        child.close()
        return _Worker(device, process, parent)

    def run(self, jobs: list[CellJob]) -> None:
        pending = deque(jobs)
        workers: list[_Worker] = []
        try:
            while pending or any(w.job is not None for w in workers):
                for w in [w for w in workers if w.job is None and not w.process.is_alive()]:
                    self._retire(w, workers)
                idle = [w for w in workers if w.job is None]
                for _ in range(min(len(self.free_slots), len(pending) - len(idle))):
                    workers.append(self._start())
                for w in workers:
                    if w.job is None and pending:
                        job = pending.popleft()
                        try:
                            w.conn.send(replace(job, device=w.device))
                            w.job = job
                        except OSError:  # died while idle: retired on the next round
                            pending.appendleft(job)
                busy = [w for w in workers if w.job is not None]
                if not busy:
                    continue
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        outcome = _receive(w)
                        if outcome is None:  # ended without reporting
                            assert w.job is not None  # a worker that reported nothing was running a job
                            w.process.join()
                            outcome = record_failure(w.job, _death_reason(w))
                        w.job = None
                        self.report(outcome)
        finally:
            for w in workers:
                if w.job is None and w.process.is_alive():
                    with contextlib.suppress(OSError):
                        w.conn.send(None)
            for w in workers:
                w.process.join(timeout=5 if w.job is None else 0)
                if w.process.is_alive():
                    w.process.terminate()
                    w.process.join()

    def _retire(self, w: _Worker, workers: list[_Worker]) -> None:
        """Drop a dead idle worker; its slot goes back to the queue."""
        workers.remove(w)
        w.conn.close()
        self.free_slots.append(w.device)


def _receive(w: _Worker) -> Outcome | None:
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    return None


def _death_reason(w: _Worker) -> str:
    code = w.process.exitcode
    how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return f"the worker process on {w.device} died ({how}) while training this cell"


def worker_main(conn: Connection, device: str, parent_pid: int) -> None:
    """A pool worker: run the jobs it is sent on ``device`` until it gets None."""
    _die_with_parent(parent_pid)
    data_cache: dict = {}
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        try:
            outcome = execute_cell(job, data_cache)
        except KeyboardInterrupt:
            return
        except Exception as e:  # not the training (that is recorded in the result): IO, locks
            outcome = Outcome(job.key, "failed", f"{type(e).__name__}: {e} (no result written)")
        conn.send(outcome)


def _die_with_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the runner, which stops the workers
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):

        def watchdog() -> None:
            while os.getppid() == parent_pid:
                threading.Event().wait(1.0)
            os._exit(1)

        threading.Thread(target=watchdog, daemon=True).start()
    if os.getppid() != parent_pid:  # the runner died before the signal was armed
        os._exit(1)
