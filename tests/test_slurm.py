"""The slurm executor through its real code path, with submitit's LocalExecutor as the
backend (`--slurm-backend local`): one job per cell, failure isolation, nothing resubmitted
for finished cells, and pre-emption: SIGUSR2 -> checkpoint hook -> requeue -> resume."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from mtlbench.cli import main
from mtlbench.grid.config import load_benchmark
from mtlbench.core.errors import ConfigError
from mtlbench.run.job import log_path
from mtlbench.grid.executor import ExecutorOptions, with_overrides
from mtlbench.run.slurm import SlurmExecutor
from mtlbench.run.locks import lock_path, read_lock
from tests.grid_support import leftovers, results_of, run_args, training_record

LOCAL_SLURM = ["--executor", "slurm", "--slurm-backend", "local", "--cpus", "1", "--gpus", "0"]


def test_grid_runs_as_submitit_jobs(grid_reference, tmp_path, capsys):
    config, expected = grid_reference
    results = tmp_path / "r"
    args = run_args(config, results, "--only", "seed=0", "--only", "method=ew,broken", *LOCAL_SLURM, "--max-parallel", "2")
    assert main(args) == 1  # the NaN cell failed, the other one completed
    out = capsys.readouterr().out
    assert "slurm (local backend): one job per cell, at most 2 at a time" in out
    got = results_of(results)
    ew = got["grid/multimnist/r8/ew__none__seed0.json"]
    assert ew["status"] == "ok" and ew["provenance"]["executor"] == "slurm"
    assert ew["provenance"]["slurm_job_id"] and ew["provenance"]["pid"] != os.getpid()
    assert training_record(ew) == training_record(expected["grid/multimnist/r8/ew__none__seed0.json"])
    broken = got["grid/multimnist/r8/broken__none__seed0.json"]
    assert broken["status"] == "failed" and "non-finite update" in broken["reason"]
    submitted = sorted((results / ".slurm").glob("*_submitted.pkl"))
    assert len(submitted) == 2
    assert leftovers(results) == []

    assert main(args) == 0  # finished cells are filtered before anything is submitted
    assert "2 cells: 1 done, 1 failed (re-run them with --retry-failed), 0 to run" in capsys.readouterr().out
    assert sorted((results / ".slurm").glob("*_submitted.pkl")) == submitted


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(grid_reference, tmp_path):
    config, expected = grid_reference
    results = tmp_path / "r"
    cell = next(c for c in load_benchmark(config).cells() if c.method == "pcgrad" and c.seed == 0)
    args = run_args(config, results, "--only", "seed=0", "--only", "method=pcgrad", *LOCAL_SLURM)
    code: list[int] = []
    runner = threading.Thread(target=lambda: code.append(main(args)))
    runner.start()
    checkpoint = results / ".checkpoints" / cell.relpath.with_suffix("") / "joint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    job = read_lock(lock_path(results, cell.relpath))
    os.kill(job.pid, signal.SIGUSR2)  # what SLURM sends before pre-emption or the time limit
    runner.join(timeout=300)
    assert code == [0]
    result = results_of(results)[str(cell.relpath)]
    assert result["provenance"]["resumed_after_epoch"]["joint"] >= 1
    assert result["provenance"]["pid"] != job.pid  # the requeued run finished it
    assert training_record(result) == training_record(expected[str(cell.relpath)])
    assert "resumed after epoch" in log_path(results, cell).read_text()
    assert any("Requeued job" in p.read_text() for p in (results / ".slurm").glob("*_log.*"))
    assert leftovers(results) == []


def test_slurm_backend_needs_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match="`sbatch` is not on this machine's PATH.*backend = \"local\""):
        SlurmExecutor(with_overrides(ExecutorOptions(), {"kind": "slurm"}), tmp_path)


def test_job_states_read_array_tasks_and_plain_jobs_from_scontrol(monkeypatch):
    """scontrol's one-line records, as SLURM 22.05 prints them: array tasks are keyed as submitit
    names them (<array>_<task>), plain jobs by their id; no scontrol -> no states."""
    import subprocess

    from mtlbench.run import slurm

    out = (
        "JobId=61 ArrayJobId=60 ArrayTaskId=1 JobName=submitit UserId=root(0) JobState=CANCELLED Reason=None\n"
        "JobId=60 ArrayJobId=60 ArrayTaskId=0 JobName=submitit UserId=root(0) JobState=RUNNING Reason=None\n"
        "JobId=62 JobName=wrap UserId=root(0) JobState=COMPLETED Reason=None\n"
        "JobId=63 ArrayJobId=63 ArrayTaskId=2-5%1 JobName=submitit JobState=PENDING Reason=JobArrayTaskLimit\n"
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out, stderr=""))
    states = slurm.job_states()
    assert states == {"60_1": "CANCELLED", "60_0": "RUNNING", "62": "COMPLETED", "63": "PENDING"}
    assert [k for k, v in states.items() if v in slurm.ENDED_STATES] == ["60_1"]

    def missing(*a, **k):
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr(subprocess, "run", missing)
    assert slurm.job_states() == {}


def test_status_says_where_a_cell_submitted_without_waiting_stands(grid_reference, tmp_path, monkeypatch, capsys):
    """A cell submitted with --no-wait has no result and no lock until its job starts: status
    reads the job it was submitted as and asks the scheduler once (queued, ended without a
    result, or no longer listed) instead of calling it plainly pending."""
    from mtlbench.run import status
    from mtlbench.run.slurm import record_submitted

    config, _ = grid_reference
    cells = [c for c in load_benchmark(config).cells() if c.seed == 0][:3]
    results = tmp_path / "r"
    for cell, job in zip(cells, ("70_0", "70_1", "70_2")):
        record_submitted(results, cell.relpath, job)
    asked = []
    monkeypatch.setattr(status, "job_states", lambda: asked.append(1) or {"70_0": "PENDING", "70_1": "CANCELLED"})
    states = status.cell_states(cells, results)
    assert len(asked) == 1 and [s.state for s in states] == ["pending"] * 3
    assert states[0].reason == "queued as slurm job 70_0 (PENDING)"
    assert states[1].reason.startswith("slurm job 70_1 ended as CANCELLED without a result: `mtlbench run` runs it again")
    assert "the scheduler no longer lists" in states[2].reason
    text = status.grid_status(cells, results)
    assert "pending (3):" in text and "ended as CANCELLED" in text
