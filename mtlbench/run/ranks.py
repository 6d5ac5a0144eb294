"""A cell trained by several processes on this machine (``[executor] processes_per_run = N``).

The process that runs the cell (in-process or a pool worker; it holds the cell's lock and log)
is rank 0: it starts ranks 1 to N-1 as child processes (``python -m mtlbench.run.ranks``; they
die with it), joins them in one process group (gloo on CPU, NCCL on CUDA, rank r on the r-th
device after the job's) and trains the cell with them (:mod:`mtlbench.train.distributed`). Rank 0
alone writes checkpoints and the result, which records the world size; the other ranks read the
same checkpoint when the cell resumes. A rank that fails or dies makes rank 0's next collective
fail (or time out, ``MTLBENCH_COLLECTIVE_TIMEOUT_S``, 300 s by default), and the cell's failed
result names each rank's own error.
"""

from __future__ import annotations

import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlbench.run.job import CellJob, Outcome, _train_and_write, plugins_of, resolve_device

if TYPE_CHECKING:
    import torch


def rank_device(job: CellJob, rank: int) -> "torch.device":
    """Rank ``rank``'s device: the job's CPU, or the ``rank``-th CUDA device after the job's."""
    import torch

    base = resolve_device(job.device)
    if base.type != "cuda":
        return base
    index = (base.index or 0) + rank
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"processes_per_run = {job.processes} on {base} needs CUDA devices {base.index or 0} to "
            f"{(base.index or 0) + job.processes - 1}; this machine has {torch.cuda.device_count()}"
        )
    return torch.device("cuda", index)


def backend_for(device: "torch.device") -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # in the child, before it runs Python
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def train_and_write_ranks(job: CellJob, data_cache: dict | None) -> Outcome:
    """Train ``job`` with ``job.processes`` ranks, this process rank 0; write its result."""
    from mtlbench.train import distributed

    address = f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory(prefix="mtlbench-ranks-") as tmp:
        spec = Path(tmp) / "job.pkl"
        spec.write_bytes(pickle.dumps(job))
        helpers: list[tuple[int, subprocess.Popen, Path]] = []
        for rank in range(1, job.processes):
            err = Path(tmp) / f"rank{rank}.err"
            with open(err, "wb") as sink:
                command = [sys.executable, "-m", "mtlbench.run.ranks", str(spec), str(rank), address]
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, preexec_fn=_die_with_parent)
            helpers.append((rank, process, err))

        def explain() -> str:
            """What the other ranks said, once they have ended (a few seconds at most)."""
            deadline = time.monotonic() + 10.0
            notes = []
            for rank, process, err in helpers:
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    notes.append(f"rank {rank} was still running")
                    continue
                if process.returncode:
                    lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()]
                    last = lines[-1].removeprefix(f"[rank{rank}]:").strip() if lines else f"exit status {process.returncode}"
                    notes.append(f"rank {rank} failed: {last}")
            return f" ({'; '.join(notes)})" if notes else ""

        device = rank_device(job, 0)
        try:
            return _train_and_write(
                job,
                data_cache,
                explain=explain,
                device=device,
                before=lambda: distributed.initialise(0, job.processes, address, backend_for(device), device),
            )
        finally:
            distributed.shutdown()
            for _, process, _ in helpers:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def rank_main(spec: Path, rank: int, address: str) -> int:
    """Rank ``rank`` (> 0) of a cell started by rank 0: join it and train."""
    from mtlbench.train import distributed

    job: CellJob = pickle.loads(spec.read_bytes())
    device = rank_device(job, rank)
    distributed.initialise(rank, job.processes, address, backend_for(device), device)
    try:
        train_rank(job, rank, device)
    finally:
        distributed.shutdown()
    return 0


def train_rank(job: CellJob, rank: int, device: "torch.device") -> None:
    """Rank ``rank`` (> 0) of a cell, in the process group already: train with the others on
    ``device``. It writes no checkpoint and no result; a mitigation's shared cache (Recon's layer
    search) gets the same entry as rank 0's."""
    import torch

    from mtlbench.train.cell import train_cell
    from mtlbench.train.checkpoint import CellCheckpoints

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    train_cell(
        job.cell,
        plugins_of(job.root),
        data_dir=job.data_dir,
        device=device,
        progress=False,
        cache_dir=Path(job.results) / ".cache",
        checkpoints=CellCheckpoints(job.results, job.cell, enabled=job.checkpoint),  # read only: rank 0 saves
        deterministic=job.deterministic,
        run_info={"world_size": job.processes},
        outputs=job.results,
    )


def scheduler_explain() -> str:
    return " (the other ranks' own errors are in the job's log files, one per task)"


def run_scheduled(job: CellJob, lock_job: str, rank: int, local_rank: int, master: str, job_number: str) -> Outcome:
    """One task of a SLURM job that runs a cell over ``job.processes`` tasks: every task joins
    the process group (rank 0's host, a port derived from the job's number); rank 0 takes the
    cell's lock and says whether the cell runs (another runner may hold it or have finished it);
    then all train, rank 0 writes."""
    import torch.distributed as dist

    from mtlbench.run.job import execute_cell
    from mtlbench.train import distributed

    # each task on its own GPU of its node (rank_device(job, 0) is then the job's device)
    job = replace(job, device=f"cuda:{local_rank}" if resolve_device(job.device).type == "cuda" else job.device)
    port = 20000 + int("".join(c for c in job_number if c.isdigit()) or 0) % 20000
    device = rank_device(job, 0)
    distributed.initialise(rank, job.processes, f"tcp://{master}:{port}", backend_for(device), device)
    try:

        def decided(go: bool) -> None:
            dist.broadcast_object_list([go], src=0)

        if rank == 0:
            return execute_cell(job, lock_job=lock_job, joined=decided)
        verdict: list[Any] = [None]
        dist.broadcast_object_list(verdict, src=0)
        if not verdict[0]:
            return Outcome(job.key, "skipped", "rank 0 did not run the cell")
        train_rank(job, rank, rank_device(job, 0))  # this task's own device
        return Outcome(job.key, "ok", f"rank {rank}")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(rank_main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
