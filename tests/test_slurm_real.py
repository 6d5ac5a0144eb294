"""The slurm executor against a real SLURM scheduler (sbatch, slurmctld, slurmd on this machine:
`scripts/slurm-one-node.sh` starts one). Without a reachable scheduler these tests skip with a
one-line reason, unless MTLBENCH_REQUIRE_SLURM=1 turns that into a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from mtlbench.cli import main
from mtlbench.run.slurm import partitions
from tests.grid_support import results_of, run_args, training_record


def _unavailable(reason: str) -> None:
    if os.environ.get("MTLBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"a SLURM scheduler is required here (MTLBENCH_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def partition() -> str:
    """The default partition of the scheduler this machine reaches, with an idle node."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        _unavailable("no sbatch/sinfo on PATH (start one: sudo bash scripts/slurm-one-node.sh)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        _unavailable(f"sinfo failed ({e}); is slurmctld running? (sudo bash scripts/slurm-one-node.sh)")
    rows = [line.split() for line in out.splitlines() if line.strip()]
    usable = [p.rstrip("*") for p, state in rows if p.endswith("*") and state in ("idle", "mixed")]
    if not usable:
        _unavailable(f"no default partition with an idle node: sinfo says {out.strip()!r}")
    return usable[0]


def _real(partition: str) -> list[str]:
    return ["--executor", "slurm", "--slurm-backend", "slurm", "--partition", partition, "--cpus", "1", "--gpus", "0",
            "--mem-gb", "2", "--time-min", "10"]  # fmt: skip


def _wait_for(done: Callable[[], bool], deadline: float, failure: str, interval: float = 2.0) -> None:
    """Poll ``done()`` until it holds; fail with ``failure`` once ``deadline`` (time.monotonic) passes."""
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(interval)
    pytest.fail(failure)


def _status_says(config: Path, results: Path, text: str, capsys: pytest.CaptureFixture, *only: str) -> bool:
    """Whether `mtlbench status` of these cells prints ``text`` now."""
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--results", str(results), *only]) == 0
    return text in capsys.readouterr().out


def _checkpointed(results: Path) -> bool:
    """Whether a cell under ``results`` has saved an epoch."""
    checkpoints = results / ".checkpoints"
    return checkpoints.is_dir() and any(checkpoints.rglob("*.pt"))


def _queue(*columns: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-o", " ".join(columns)], capture_output=True, text=True, timeout=30).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def _the_running_job() -> str:
    """The id of the one running job (array tasks as <array>_<task>)."""
    jobs = _queue("%i", "%T")
    running = [job for job, state in jobs if state == "RUNNING"]
    assert len(running) == 1, jobs
    return running[0]


def test_a_job_array_on_the_real_scheduler_equals_the_local_runs(grid_reference, partition, tmp_path, capsys):
    config, expected = grid_reference
    results = tmp_path / "r"
    args = run_args(config, results, "--only", "method=ew,pcgrad", "--only", "seed=0", *_real(partition), "--max-parallel", "2")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "submitted job array" in out
    got = results_of(results)
    assert set(got) == {"grid/multimnist/r8/ew__none__seed0.json", "grid/multimnist/r8/pcgrad__none__seed0.json"}
    for name, result in got.items():
        assert result["status"] == "ok" and result["provenance"]["executor"] == "slurm"
        assert result["provenance"]["slurm_job_id"]  # a real SLURM array task ran it
        assert training_record(result) == training_record(expected[name])  # same numbers as the local runner
    assert main(args) == 0  # finished cells are not submitted again
    assert "0 to run" in capsys.readouterr().out


def test_a_bad_partition_is_one_clear_error_naming_the_real_ones(grid_reference, partition, tmp_path, capsys):
    config, _ = grid_reference
    args = run_args(config, tmp_path / "r", "--only", "method=ew", "--only", "seed=0", *_real(partition))
    args[args.index(partition)] = "no-such-partition"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: sbatch refused the jobs" in err and "'no-such-partition' is not one of this cluster's" in err
    assert all(p in err for p in partitions()) and "Traceback" not in err


def test_gpus_on_a_partition_without_them_is_one_clear_error(grid_reference, partition, tmp_path, capsys):
    gres = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%G"], capture_output=True, text=True, timeout=30).stdout
    if "gpu" in gres:
        pytest.skip(f"partition {partition} offers GPUs ({gres.strip()})")
    config, _ = grid_reference
    args = run_args(config, tmp_path / "r", "--only", "method=ew", "--only", "seed=0", *_real(partition))
    args[args.index("--gpus") + 1] = "1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: sbatch refused the jobs" in err and "pass --gpus 0" in err and "Traceback" not in err


def test_no_wait_submits_and_status_follows_the_jobs_to_the_end(grid_reference, partition, tmp_path, capsys):
    config, expected = grid_reference
    results = tmp_path / "r"
    only = ["--only", "method=ew", "--only", "seed=0"]
    assert main([*run_args(config, results, *only, *_real(partition)), "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "submitted job array" in out and "submitted 1 cells without waiting (0 already done); follow them with" in out
    status = ["status", "--config", str(config), "--results", str(results), *only]
    assert main(status) == 0
    first = capsys.readouterr().out
    assert "1 cells: 1 running" in first or "1 cells: 1 pending" in first or "1 cells: 1 done" in first, first
    _wait_for(
        lambda: _status_says(config, results, "1 cells: 1 done", capsys, *only),
        time.monotonic() + 180,
        "the submitted job did not finish within 180 s",
    )
    name = "grid/multimnist/r8/ew__none__seed0.json"
    got = results_of(results)[name]
    assert got["provenance"]["slurm_job_id"] and training_record(got) == training_record(expected[name])


def test_max_parallel_limits_the_running_array_tasks(grid_reference, partition, tmp_path, capsys):
    """The array's throttle (sbatch --array=...%N) holds at the scheduler: four cells with
    --max-parallel 1 on a node whose CPUs could run two of them at once never overlap (each
    result records when it started and ended; timestamps are whole seconds, so a start in the
    second another ended is not counted as an overlap)."""
    from datetime import datetime

    cpus = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%c"], capture_output=True, text=True, timeout=30).stdout
    if int(cpus.split()[0].rstrip("+")) < 2:
        pytest.skip(f"partition {partition} has a single CPU: it cannot show a throttle")
    config, expected = grid_reference
    results = tmp_path / "r"
    args = run_args(config, results, "--only", "method=ew,pcgrad", "--only", "seed=0,1", *_real(partition), "--max-parallel", "1")
    assert main(args) == 0
    assert "at most 1 at a time" in capsys.readouterr().out
    got = results_of(results)
    assert len(got) == 4 and all(r["status"] == "ok" for r in got.values())
    spans = sorted(
        (datetime.fromisoformat(r["provenance"]["start_time"]), datetime.fromisoformat(r["provenance"]["end_time"]))
        for r in got.values()
    )
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, spans  # the next array task started only after the previous ended
    compared = [name for name in got if name in expected]  # the reference grid's cells among them
    assert compared
    for name in compared:
        assert training_record(got[name]) == training_record(expected[name])


def test_a_local_runner_and_an_array_on_one_folder_run_each_cell_once(grid_reference, partition, tmp_path, capsys):
    """Cells submitted to the scheduler without waiting, then the same cells run by a local
    runner on the same results folder: each cell trains once (its log has one start), by
    whichever took its lock first; the other finds the lock or the result and leaves it."""
    config, expected = grid_reference
    results = tmp_path / "r"
    only = ["--only", "method=ew,pcgrad", "--only", "seed=0"]
    assert main([*run_args(config, results, *only, *_real(partition)), "--no-wait"]) == 0
    assert main(run_args(config, results, *only)) == 0  # the local runner, at once
    _wait_for(
        lambda: _status_says(config, results, "2 cells: 2 done", capsys, *only) and not _queue("%i"),
        time.monotonic() + 240,
        "the cells or their jobs did not finish within 240 s",
    )
    got = results_of(results)
    assert set(got) == {"grid/multimnist/r8/ew__none__seed0.json", "grid/multimnist/r8/pcgrad__none__seed0.json"}
    for name, result in got.items():
        log = (results / name).with_suffix(".log").read_text()
        assert log.count(" start ") == 1, log  # trained once, by one runner
        assert training_record(result) == training_record(expected[name])


LONG_TOML = """
[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.long]
backbones = ["r8"]
methods = ["ew"]
seeds = [0]
conflict = { every = 50 }

[suites.long.tasks.multimnist]
epochs = 8
batch_size = 32
optimizer = "adam"
lr = 0.002
max_train_samples = 1024
eval_batch_size = 1024
"""


def test_a_requeued_job_resumes_from_its_last_epoch_and_ends_as_if_uninterrupted(partition, tmp_path, capsys, data_dir):
    """`scontrol requeue` in the middle of a cell: SLURM kills the running task and starts it
    again; the new run takes over the dead run's lock, resumes after the last checkpointed epoch
    and writes the result an uninterrupted local run writes."""
    from tests.conftest import make_project

    config = make_project(tmp_path / "p", LONG_TOML)
    local = tmp_path / "local"
    assert main([*run_args(config, local), "--data", str(data_dir)]) == 0
    expected = results_of(local)
    results = tmp_path / "r"
    assert main([*run_args(config, results, *_real(partition)), "--data", str(data_dir), "--no-wait"]) == 0
    deadline = time.monotonic() + 240
    _wait_for(lambda: _checkpointed(results), deadline, "no checkpoint within 240 s", interval=0.5)
    job = _the_running_job()
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=30)
    _start_when_requeued(job)
    _wait_for(lambda: _status_says(config, results, "1 cells: 1 done", capsys), deadline + 300, "the requeued job did not finish")
    got = results_of(results)
    ((name, result),) = got.items()
    assert result["status"] == "ok" and result["provenance"]["executor"] == "slurm"
    assert result["provenance"]["resumed_after_epoch"], "the requeued run started from scratch"
    log = (results / name).with_suffix(".log").read_text()
    assert log.count(" start ") == 2 and "resuming from a checkpoint" in log, log
    assert training_record(result) == training_record(expected[name])


def _start_when_requeued(job: str, within_s: float = 120.0) -> None:
    """SLURM holds a requeued job back for two minutes (its begin time, set once the old
    processes are gone); let it start then, as a pre-empted job would on a free cluster."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if state.stdout.strip() == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
            return
        time.sleep(0.5)


def _time_limit_signal(job: str) -> None:
    """What SLURM sends a job ``signal_delay`` before its time limit (submitit asks for USR2 with
    --signal): sent now, to the job's steps. With a limit of 2 minutes submitit counts any such
    signal as a time-out (its guaranteed wall time, min(0.8 x limit, limit - 10 min), is negative),
    so the test need not wait for a real limit, whose signal SLURM may send up to a minute early."""
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True, timeout=30)


def test_a_job_at_its_time_limit_is_requeued_by_submitit_and_completes(partition, tmp_path, capsys, data_dir):
    """The time-limit signal in the middle of a cell: submitit checkpoints (the cell's last
    epoch is on disk already), requeues the job, and the new run resumes and writes the result
    an uninterrupted local run writes."""
    from tests.conftest import make_project

    config = make_project(tmp_path / "p", LONG_TOML)
    local = tmp_path / "local"
    assert main([*run_args(config, local), "--data", str(data_dir)]) == 0
    results = tmp_path / "r"
    cluster = [*_real(partition)[:-1], "2"]  # --time-min 2
    assert main([*run_args(config, results, *cluster), "--data", str(data_dir), "--no-wait"]) == 0
    deadline = time.monotonic() + 240
    _wait_for(lambda: _checkpointed(results), deadline, "no checkpoint within 240 s", interval=0.5)
    job = _the_running_job()
    _time_limit_signal(job)
    _start_when_requeued(job)
    _wait_for(lambda: _status_says(config, results, "1 cells: 1 done", capsys), deadline + 300, "the requeued job did not finish")
    ((name, result),) = results_of(results).items()
    assert result["status"] == "ok" and result["provenance"]["resumed_after_epoch"]
    submitit_log = "".join(p.read_text() for p in (results / ".slurm").glob(f"{job.split('_')[0]}*_log.err"))
    assert "this job is timed-out" in submitit_log, submitit_log[-2000:]
    assert training_record(result) == training_record(results_of(local)[name])


def test_a_job_out_of_requeues_at_its_time_limit_is_recorded_failed_with_the_reason(partition, tmp_path, data_dir):
    """max_requeue = 0: the first time-limit signal ends the job; the waiting runner records the
    cell failed with submitit's reason, and --retry-failed runs it again."""
    from tests.conftest import make_project
    from tests.grid_support import start_cli

    config = make_project(tmp_path / "p", LONG_TOML + "\n[executor.slurm]\nmax_requeue = 0\n")
    results = tmp_path / "r"
    cluster = [*_real(partition)[:-1], "2"]
    runner = start_cli([*run_args(config, results, *cluster), "--data", str(data_dir)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def started() -> bool:
        assert runner.poll() is None, "the runner ended before the job saved an epoch"
        return _checkpointed(results)

    _wait_for(started, time.monotonic() + 240, "the job did not start a checkpointed epoch", interval=0.5)
    _time_limit_signal(_the_running_job())
    out, _ = runner.communicate(timeout=240)
    assert runner.returncode == 1 and "1 failed" in out, out
    ((_, failed),) = results_of(results).items()
    assert failed["status"] == "failed"
    assert "timed-out too many times" in failed["reason"], failed["reason"]


def test_a_cancelled_job_is_recorded_failed_and_retry_failed_runs_it(partition, tmp_path, capsys, data_dir):
    """`scancel` in the middle of a cell: the waiting runner records the cell failed with the
    job and what SLURM said, and goes on; `--retry-failed` runs it again to the result an
    uninterrupted run writes."""
    from tests.conftest import make_project
    from tests.grid_support import start_cli

    config = make_project(tmp_path / "p", LONG_TOML)
    results = tmp_path / "r"
    args = [*run_args(config, results, *_real(partition)), "--data", str(data_dir)]
    runner = start_cli(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def started() -> bool:
        assert runner.poll() is None, "the runner ended before the job saved an epoch"
        return _checkpointed(results)

    _wait_for(started, time.monotonic() + 240, "the job did not start a checkpointed epoch", interval=0.5)
    job = _the_running_job()
    subprocess.run(["scancel", job], check=True, timeout=30)
    out, _ = runner.communicate(timeout=240)
    assert runner.returncode == 1 and "1 failed" in out, out  # the run ends, reporting the failure
    ((name, failed),) = results_of(results).items()
    assert failed["status"] == "failed", out
    assert f"slurm job {job.split('_')[0]}" in failed["reason"], failed["reason"]
    assert "ended as CANCELLED without reporting" in failed["reason"], failed["reason"]
    assert main([*args, "--retry-failed"]) == 0
    ((_, result),) = results_of(results).items()
    assert result["status"] == "ok"
    local = tmp_path / "local"
    assert main([*run_args(config, local), "--data", str(data_dir)]) == 0
    assert training_record(result) == training_record(results_of(local)[name])


def test_status_shows_a_job_cancelled_after_no_wait(partition, tmp_path, capsys, data_dir):
    """Submitted without waiting, then cancelled: no runner is left to record the cell failed,
    so status asks the scheduler about the job the cell was submitted as and says it ended
    without a result (not plainly "pending"); `mtlbench run` then runs it."""
    from mtlbench.grid.config import load_benchmark
    from mtlbench.run.slurm import submitted_job
    from tests.conftest import make_project

    config = make_project(tmp_path / "p", LONG_TOML)
    results = tmp_path / "r"
    assert main([*run_args(config, results, *_real(partition)), "--data", str(data_dir), "--no-wait"]) == 0
    (cell,) = load_benchmark(config).cells()
    job = submitted_job(results, cell.relpath)
    assert job is not None  # submitit's id: a plain job for one cell, <array>_<task> for more
    subprocess.run(["scancel", job.split("_")[0]], check=True, timeout=30)
    _wait_for(
        lambda: _status_says(config, results, f"slurm job {job} ended as CANCELLED without a result", capsys),
        time.monotonic() + 120,
        "status did not report the cancelled job within 120 s",
    )
    assert main([*run_args(config, results), "--data", str(data_dir)]) == 0  # the local runner runs it
    assert _status_says(config, results, "1 cells: 1 done", capsys)


def test_one_job_with_two_tasks_trains_a_cell_as_one_process_does(partition, tmp_path, data_dir):
    """processes_per_run = 2 on SLURM: one job with two tasks (one rank each, gloo between them)
    per cell; its results equal the same cells trained in one local process."""
    from tests.test_distributed import assert_same_runs, project_with_rankfail, results_by_row

    config = project_with_rankfail(tmp_path / "proj")
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    only = ["--config", str(config), "--suite", "ddp", "--only", "method=pcgrad,mgda-ub", "--no-progress"]
    assert main(["run", *only, "--results", str(local), "--threads", "1"]) == 0
    assert main(["run", *only, "--results", str(cluster), *_real(partition), "--processes-per-run", "2"]) == 0
    several = results_by_row(cluster)
    assert len(several) == 2 and all(r["provenance"].get("slurm_job_id") for r in several.values())
    assert_same_runs(results_by_row(local), several, 2)
