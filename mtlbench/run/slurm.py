"""The slurm executor: one submitit job per cell, submitted as one job array with a cap on
how many run at a time, with the GPU/CPU/memory/time options of ``[executor.slurm]``.

Each job runs :func:`~mtlbench.run.job.execute_cell`, so it takes the cell's lock,
resumes from the cell's checkpoint and writes the result file itself. On pre-emption or
time-out SLURM signals the job; submitit calls :meth:`CellJobFunction.checkpoint`, which
releases the cell's lock and requeues the same job: the requeued run resumes after the
last finished epoch (the per-epoch checkpoint is the one mechanism for kills, pre-emption
and time-outs).

``backend = "local"`` sends the same jobs through submitit's LocalExecutor (each job a
process on this machine, signals and requeue included); the runner then keeps at most
``max_parallel`` jobs running itself, as SLURM does for an array.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from mtlbench.core.errors import ConfigError
from mtlbench.grid.executor import ExecutorOptions
from mtlbench.run.job import CellJob, Outcome, execute_cell, record_failure
from mtlbench.run.locks import release_all

POLL_S = {"local": 0.2, "slurm": 15.0}
# SLURM job states after which a job never reports (not COMPLETED, not requeued)
ENDED_STATES = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def job_states() -> dict[str, str]:
    """Every job slurmctld still knows (it keeps ended ones for MinJobAge, 300 s by default),
    by submitit's job id (``<array>_<task>`` for array tasks) -> its JobState; empty when
    scontrol cannot be asked. This, not ``sacct``, is what tells a cancelled job from a
    running one on a cluster without accounting storage: there submitit's own status check
    fails, and a job cancelled before writing its result would be waited for forever."""
    import re
    import subprocess

    try:
        out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobState" not in fields:
            continue
        key = fields.get("JobId", "")
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId", "").isdigit():
            key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        states[key] = fields["JobState"]
    return states


JOBS_DIR = ".slurm-jobs"  # under a results folder: the SLURM job of each cell submitted without waiting


def submitted_record(results: Path, relpath: Path) -> Path:
    return Path(results) / JOBS_DIR / relpath.with_suffix(".job")


def record_submitted(results: Path, relpath: Path, job_id: str) -> None:
    """Note that the cell at ``relpath`` was submitted as SLURM job ``job_id`` (read by status)."""
    path = submitted_record(results, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job_id + "\n")


def submitted_job(results: Path, relpath: Path) -> str | None:
    """The SLURM job a cell was last submitted as without waiting, or None."""
    try:
        return submitted_record(results, relpath).read_text().strip() or None
    except OSError:
        return None


def partitions() -> list[str]:
    """The partitions ``sinfo`` lists here (the default one without its ``*``); [] when it cannot run."""
    import subprocess

    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.strip().rstrip("*") for line in out.splitlines() if line.strip()})


class CellJobFunction:
    """What each submitit job runs (pickled by reference: importable, stateless)."""

    def __call__(self, job: CellJob) -> Outcome:
        import submitit

        env = submitit.JobEnvironment()
        if job.processes > 1:  # one job, one task per rank (mtlbench.run.ranks)
            from mtlbench.run.ranks import run_scheduled

            number = os.environ.get("SLURM_JOB_ID", str(env.job_id))
            return run_scheduled(job, env.job_id, env.global_rank, env.local_rank, env.hostnames[0], number)
        return execute_cell(job, lock_job=env.job_id)

    def checkpoint(self, job: CellJob) -> Any:
        """submitit's pre-emption/time-out hook: the cell's checkpoint already holds its last
        finished epoch; free the lock and requeue the same job to resume from it."""
        import submitit

        release_all()
        return submitit.helpers.DelayedSubmission(self, job)


class SlurmExecutor:
    def __init__(self, options: ExecutorOptions, results: Path, echo: Callable[[str], None] = print) -> None:
        self.options = options
        self.slurm = options.slurm
        self.folder = Path(self.slurm.folder) if self.slurm.folder else Path(results) / ".slurm"
        self.echo = echo
        if self.slurm.backend == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                "executor slurm: `sbatch` is not on this machine's PATH; run from a SLURM login node, or set "
                '[executor.slurm] backend = "local" (--slurm-backend local) to run the same jobs through '
                "submitit's LocalExecutor"
            )
        if self.slurm.backend == "local" and not self.slurm.wait:
            raise ConfigError('executor.slurm.wait = false needs backend = "slurm": local jobs are run by this process')

    def describe(self) -> str:
        s = self.slurm
        where = f"partition {s.partition}" if s.partition else "default partition"
        return (
            f"slurm ({s.backend} backend): one job per cell, at most {s.max_parallel} at a time, {where}, "
            f"{s.gpus} GPU / {s.cpus} CPU / {s.mem_gb:g} GB / {s.time_min} min per job"
        )

    def _submitit(self) -> Any:
        import submitit

        s = self.slurm
        ex = submitit.AutoExecutor(
            folder=self.folder, cluster=s.backend, slurm_max_num_timeout=s.max_requeue, local_max_num_timeout=s.max_requeue
        )
        params: dict[str, Any] = {
            "name": "mtlbench",
            "timeout_min": s.time_min,
            "mem_gb": s.mem_gb,
            "cpus_per_task": s.cpus,
            "tasks_per_node": self.options.processes_per_run,  # one task per rank of a cell
            "gpus_per_node": s.gpus,
            "slurm_array_parallelism": s.max_parallel,
            "slurm_setup": list(s.setup) or None,
            "local_setup": list(s.setup) or None,
            "slurm_additional_parameters": dict(s.additional) or None,
        }
        for key in ("partition", "account", "qos", "constraint"):
            params[f"slurm_{key}"] = getattr(s, key) or None
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def prepare(self, job: CellJob) -> CellJob:
        return replace(job, device="auto", threads=self.options.threads or self.slurm.cpus, progress=False)

    def run(self, jobs: list[CellJob], report: Callable[[Outcome], None]) -> None:
        jobs = [self.prepare(j) for j in jobs]
        ex, fn, s = self._submitit(), CellJobFunction(), self.slurm
        pending: deque[CellJob] = deque(jobs)
        running: list[tuple[CellJob, Any]] = []
        if s.backend == "slurm":  # one array: SLURM keeps at most max_parallel of it running
            running = list(zip(jobs, self._submitted(lambda: ex.map_array(fn, jobs))))
            pending.clear()
            array = running[0][1].job_id.split("_")[0] if running else "-"
            self.echo(f"submitted job array {array}: {len(jobs)} jobs; submitit files in {self.folder}")
            if not s.wait:  # `mtlbench status` follows them: each cell's job id, where status finds it
                for job, sj in running:
                    record_submitted(job.results, job.cell.relpath, str(sj.job_id))
                return
        while pending or running:
            while pending and len(running) < s.max_parallel:
                job = pending.popleft()
                running.append((job, self._submitted(functools.partial(ex.submit, fn, job))))
            # (job, submitit job, the state SLURM ended it in when it ended without reporting)
            finished: list[tuple[CellJob, Any, str | None]] = [(job, sj, None) for job, sj in running if sj.done()]
            if not finished and s.backend == "slurm":
                ended = job_states()
                finished = [(job, sj, ended[str(sj.job_id)]) for job, sj in running if ended.get(str(sj.job_id)) in ENDED_STATES]
            for job, sj, state in finished:
                running.remove((job, sj))
                report(self._outcome(job, sj, state))
            if not finished:
                time.sleep(POLL_S[s.backend])

    def _submitted(self, submit: Callable[[], Any]) -> Any:
        """``submit()``; sbatch refusing the jobs becomes one clear error: its message, and what
        to change (the partitions sinfo lists; --gpus 0 where the partition has no GPUs)."""
        import submitit

        try:
            return submit()
        except submitit.core.utils.FailedJobError as e:
            message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise ConfigError(f"sbatch refused the jobs: {message}. {self._hint(message)}") from None

    def _hint(self, message: str) -> str:
        s = self.slurm
        if "partition" in message.lower():
            found = partitions()
            listed = ", ".join(found) if found else "none (is sinfo reachable?)"
            return (f"Partition {s.partition or '(the default)'!r} is not one of this cluster's: {listed}. Pass --partition "
                    "NAME or set partition in [executor.slurm] of benchmark.toml")  # fmt: skip
        if "gres" in message.lower() and s.gpus:
            return (f"The jobs ask for {s.gpus} GPU(s) (gres gpu) and this partition offers none: pass --gpus 0 "
                    "(or gpus = 0 in [executor.slurm]) for CPU jobs, or choose a partition with GPUs")  # fmt: skip
        return "Check [executor.slurm] in benchmark.toml (partition, account, qos, gpus, cpus, mem_gb, time_min)"

    def _outcome(self, job: CellJob, submitted: Any, state: str | None = None) -> Outcome:
        import submitit

        if state is not None and not submitted.done():  # ended in SLURM's books without a result
            reason = (f"slurm job {submitted.job_id} ended as {state} without reporting (cancelled, killed or out of "
                      "resources); --retry-failed runs the cell again")  # fmt: skip
            return record_failure(job, reason, lock_job=submitted.job_id)
        try:  # one task per rank of a cell: rank 0's outcome is the cell's
            return submitted.results()[0] if job.processes > 1 else submitted.result()
        except submitit.core.utils.UncompletedJobError as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            reason = f"{self.slurm.backend} job {submitted.job_id} ended without reporting: {lines[0] if lines else e}"
            outcome = record_failure(job, reason, lock_job=submitted.job_id)
            if outcome.status != "failed":
                return Outcome(job.key, "failed", f"{reason}; no result written ({outcome.message})")
            return outcome
