"""The local executor: the device-slot queue, the worker pool (CPU workers through the same
code as GPU ones), failure isolation, per-cell locks, two runners on one results folder,
executor options, and `mtlbench status`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mtlbench.report.aggregate import load_results
from mtlbench.cli import main
from mtlbench.grid.config import load_benchmark
from mtlbench.core.files import atomic_write_json
from mtlbench.core.errors import ConfigError, ResultError
from mtlbench.run.job import log_path
from mtlbench.run.local import device_slots
from mtlbench.grid.executor import ExecutorOptions, parse_executor, with_overrides
from mtlbench.run.locks import CellLock, lock_path, read_lock
from mtlbench.run.store import ResultStore
from tests.conftest import TINY_TOML, make_project
from tests.grid_support import leftovers, results_of, run_args, start_cli, training_record

PAIR = ["--only", "method=ew,pcgrad", "--only", "seed=0"]


@pytest.fixture
def reference(grid_reference):
    return grid_reference


# ---------------------------------------------------------------- options and device slots


def test_executor_table_and_command_line_overrides(tmp_path):
    config = make_project(tmp_path / "p", TINY_TOML + """
[executor]
devices = ["cuda:0", "cuda:1"]
runs_per_device = 2
deterministic = false

[executor.slurm]
partition = "gpu"
mem_gb = 32
additional = { gres = "gpu:a100:1" }
""")
    options = load_benchmark(config).executor
    assert options.devices == ("cuda:0", "cuda:1") and options.runs_per_device == 2 and not options.deterministic
    assert options.slurm.partition == "gpu" and options.slurm.mem_gb == 32.0 and options.slurm.additional == {"gres": "gpu:a100:1"}
    assert options.slurm.gpus == 1  # default kept
    changed = with_overrides(options, {"kind": "slurm", "devices": "cpu", "slurm.time_min": 30, "threads": None})
    assert changed.kind == "slurm" and changed.devices == ("cpu",) and changed.slurm.time_min == 30
    assert changed.slurm.partition == "gpu" and changed.runs_per_device == 2


@pytest.mark.parametrize("table, message", [
    ({"kind": "cluster"}, "executor.kind: unknown executor 'cluster'; valid: local, slurm"),
    ({"runs_per_device": 0}, "executor.runs_per_device: must be >= 1"),
    ({"runs_per_devices": 2}, "executor.runs_per_devices: unknown key; valid keys:"),
    ({"devices": ["gpu0"]}, "executor.devices: unknown device 'gpu0'"),
    ({"devices": ["auto", "cuda:0"]}, "'auto' stands alone"),
    ({"threads": "4"}, "executor.threads: expected an integer, got '4'"),
    ({"slurm": {"mem_gb": -1}}, "executor.slurm.mem_gb: must be > 0"),
    ({"slurm": {"backend": "pbs"}}, "executor.slurm.backend: unknown backend 'pbs'; valid: slurm, local"),
    ({"slurm": {"setup": [1]}}, "executor.slurm.setup: expected a list of strings"),
])
def test_bad_executor_options_name_the_key(table, message):
    with pytest.raises(ConfigError) as e:
        parse_executor(table, "bench.toml")
    assert str(e.value).startswith("bench.toml: ") and message in str(e.value)


def test_device_slots_are_a_queue_of_devices_k_times():
    four = with_overrides(ExecutorOptions(), {"runs_per_device": 2})
    assert device_slots(four, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"] * 2
    assert device_slots(ExecutorOptions(), 0) == ["cpu"]  # CPU fallback
    picked = with_overrides(ExecutorOptions(), {"devices": "cuda:1,cuda:3", "runs_per_device": 4})
    assert device_slots(picked, 4) == ["cuda:1", "cuda:3"] * 4
    with pytest.raises(ConfigError, match=r"cuda:3 is not visible here \(2 CUDA device"):
        device_slots(picked, 2)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        device_slots(with_overrides(ExecutorOptions(), {"devices": "cuda"}), 0)


# ---------------------------------------------------------------- locks


def _write_lock(results: Path, rel: Path, **info) -> Path:
    path = lock_path(results, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"token": "x", "pid": os.getpid(), "host": socket.gethostname(), "identity": None, "job": None, "since": "then"}
    path.write_text(json.dumps({**base, **info}))
    return path


def test_a_held_lock_refuses_others_and_is_released(tmp_path):
    rel = Path("s/t/b/m__none__seed0.json")
    first, second = CellLock(tmp_path, rel), CellLock(tmp_path, rel)
    assert first.acquire()
    assert not second.acquire() and second.holder.pid == os.getpid()
    first.release()
    assert not lock_path(tmp_path, rel).exists()
    assert second.acquire()
    second.release()


def test_stale_locks_are_taken_over(tmp_path):
    rel = Path("s/t/b/m__none__seed0.json")
    gone = _finished_pid()
    _write_lock(tmp_path, rel, pid=gone)
    lock = CellLock(tmp_path, rel)
    assert lock.acquire() and f"process {gone} is gone" in lock.broken
    lock.release()

    _write_lock(tmp_path, rel, identity="another-boot:1")  # this pid, but another process's identity
    lock = CellLock(tmp_path, rel)
    assert lock.acquire() and "now belongs to another process" in lock.broken
    lock.release()

    path = _write_lock(tmp_path, rel, host="elsewhere")
    assert not CellLock(tmp_path, rel, stale_after_s=60).acquire()  # fresh heartbeat from another host
    os.utime(path, (time.time() - 120, time.time() - 120))
    lock = CellLock(tmp_path, rel, stale_after_s=60)
    assert lock.acquire() and "no heartbeat from elsewhere" in lock.broken
    lock.release()

    _write_lock(tmp_path, rel, host="node7", job="991_3")  # a requeued job finds its own lock
    lock = CellLock(tmp_path, rel, job="991_3")
    assert lock.acquire() and "earlier run of job 991_3" in lock.broken
    lock.release()


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_holder_keeps_its_lock_fresh(tmp_path):
    rel = Path("s/t/b/m__none__seed0.json")
    lock = CellLock(tmp_path, rel, stale_after_s=0.5)
    assert lock.acquire()
    path = lock_path(tmp_path, rel)
    os.utime(path, (time.time() - 100, time.time() - 100))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 1.0  # the heartbeat touched it
    assert read_lock(path).token == lock.token
    lock.release()


# ---------------------------------------------------------------- the pool and failures


def test_pool_of_cpu_workers_runs_cells_and_isolates_failures(reference, tmp_path):
    """Two worker processes fed from the device-slot queue (two CPU slots): a NaN cell and a
    cell whose process gets SIGKILLed are recorded as failed, the rest equals the in-process run."""
    config, expected = reference
    results = tmp_path / "r"
    code = main(run_args(config, results, "--only", "seed=0", "--only", "method=ew,pcgrad,broken,crash",
                         "--device", "cpu", "--runs-per-device", "2"))
    assert code == 1
    got = results_of(results)
    crash = got["grid/multimnist/r8/crash__none__seed0.json"]
    assert crash["status"] == "failed" and "died (signal SIGKILL)" in crash["reason"]
    assert "start grid/multimnist/r8/crash/none/seed0" in crash["traceback"]  # the log's tail
    broken = got["grid/multimnist/r8/broken__none__seed0.json"]
    assert broken["status"] == "failed" and "NonFiniteError" in broken["reason"]
    for name in ("ew__none__seed0.json", "pcgrad__none__seed0.json"):
        r = got[f"grid/multimnist/r8/{name}"]
        assert r["status"] == "ok" and r["provenance"]["pid"] != os.getpid()
        assert training_record(r) == training_record(expected[f"grid/multimnist/r8/{name}"])
    assert "non-finite update" in log_path(results, _cell(config, "broken")).read_text()
    assert leftovers(results) == []


def _cell(config: Path, method: str, seed: int = 0):
    return next(c for c in load_benchmark(config).cells() if c.method == method and c.seed == seed)


def test_status_summarises_per_task_and_method_with_reasons(reference, tmp_path, capsys):
    config, _ = reference
    results = tmp_path / "r"
    assert main(run_args(config, results, "--only", "method=broken", "--only", "seed=0")) == 1
    held = CellLock(results, _cell(config, "ew", 1).relpath)
    assert held.acquire()
    capsys.readouterr()
    try:
        assert main(["status", "--config", str(config), "--results", str(results), "--only", "method=ew,broken"]) == 0
    finally:
        held.release()
    out = capsys.readouterr().out
    rows = {line.split()[3]: line.split()[5:] for line in out.splitlines() if line.startswith("grid ")}
    assert rows == {"ew": ["0", "0", "1", "1", "0"], "broken": ["0", "1", "0", "1", "0"]}
    assert "grid/multimnist/r8/broken/none/seed0  NonFiniteError: non-finite update" in out
    assert f"grid/multimnist/r8/ew/none/seed1  pid {os.getpid()} on {socket.gethostname()}" in out
    assert "4 cells: 1 failed, 1 running, 2 pending" in out


# ---------------------------------------------------------------- two runners, one folder


def test_two_runners_on_one_results_folder_run_every_cell_once(reference, tmp_path, capsys):
    config, expected = reference
    results = tmp_path / "r"
    other = start_cli(run_args(config, results, *PAIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(results.glob(".locks/**/*.lock")) and other.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    capsys.readouterr()
    assert main(run_args(config, results, *PAIR)) == 0  # this process, while the other one runs
    ours = capsys.readouterr().out
    theirs, _ = other.communicate(timeout=300)
    assert other.returncode == 0, theirs
    ran = [[line.split()[1] for line in out.splitlines() if line.startswith("ok ")] for out in (ours, theirs)]
    assert ran[0] and ran[1] and not set(ran[0]) & set(ran[1])  # both worked, never on the same cell
    got = results_of(results)
    assert len(got) == len(ran[0]) + len(ran[1]) == 2
    for name, result in got.items():
        assert training_record(result) == training_record(expected[name])
        assert log_path(results, _cell(config, result["method"], result["seed"])).read_text().count(" INFO start ") == 1
    assert leftovers(results) == []


# ---------------------------------------------------------------- results never mixed


def test_results_of_another_task_version_or_schema_are_stale_and_never_aggregated(reference, tmp_path):
    config, expected = reference
    ew, pcgrad = _cell(config, "ew"), _cell(config, "pcgrad")
    store = ResultStore(tmp_path)
    write = lambda cell, data: atomic_write_json(store.path(cell), data)  # noqa: E731  (files an older mtlbench wrote)
    write(ew, {**expected[str(ew.relpath)], "task_version": "0"})
    state = store.state(ew)
    assert state.state == "stale" and state.reason == f"task version 0 in the result, {ew.task_version} now"
    write(ew, {**expected[str(ew.relpath)], "schema": "mtlbench.result/0"})
    state = store.state(ew)
    assert state.state == "stale" and "schema 'mtlbench.result/0'" in state.reason

    write(pcgrad, expected[str(pcgrad.relpath)])  # one current result beside the old one
    with pytest.raises(ResultError, match=r"different schemas would be mixed: .*1 file\(s\) have mtlbench.result/0"):
        load_results([tmp_path])


@pytest.mark.gpu
def test_pool_on_the_gpu_with_several_runs_per_device(reference, tmp_path):
    """The same queue on CUDA: every visible GPU twice; results as deterministic as on CPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config, _ = reference
    results = tmp_path / "r"
    assert main(run_args(config, results, *PAIR, "--device", "cuda", "--runs-per-device", "2")) == 0
    got = results_of(results)
    assert len(got) == 2 and all(r["provenance"]["run_device"].startswith("cuda:") for r in got.values())
    again = tmp_path / "again"
    assert main(run_args(config, again, *PAIR, "--device", "cuda", "--runs-per-device", "2")) == 0
    for name, result in results_of(again).items():
        assert training_record(result) == training_record(got[name])  # deterministic kernels on GPU
