"""Per-epoch checkpoints: a cell interrupted after any epoch, or a grid SIGKILLed at random
moments, resumes to exactly the result of an uninterrupted run (CPU)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mtlbench.train.checkpoint import CellCheckpoints, Checkpoint
from mtlbench.cli import main
from mtlbench.grid.config import load_benchmark
from mtlbench.run.job import log_path
from mtlbench.run.locks import read_lock
from mtlbench.train.cell import train_cell
from mtlbench.report.validate import validate_file
from tests.conftest import make_project
from tests.grid_support import GRID_TOML, leftovers, results_of, run_args, start_cli, training_record

CELLS = ["--only", "method=stl,pcgrad", "--only", "seed=0"]


@pytest.fixture
def reference(grid_reference):
    return grid_reference


class Interrupted(Exception):
    pass


class StopAfter(CellCheckpoints):
    """The real checkpoints, with an interruption right after model ``name`` saved ``epoch``."""

    def __init__(self, results: Path, cell, name: str, epoch: int) -> None:
        super().__init__(results, cell)
        self.stop = (name, epoch)

    def model(self, name: str) -> Checkpoint:
        checkpoint = super().model(name)
        save, stop = checkpoint.save, self.stop

        def save_then_stop(state, epoch, step, best):
            save(state, epoch, step, best)
            if (name, epoch) == stop:
                raise Interrupted(f"{name} after epoch {epoch}")

        checkpoint.save = save_then_stop
        return checkpoint


@pytest.fixture
def one_thread():
    """As in the reference run (--threads 1): the same kernels give the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method, stops", [("pcgrad", [("joint", 1)]), ("stl", [("left", 1), ("right", 1)])])
def test_interrupted_cell_resumes_to_the_uninterrupted_result(reference, tmp_path, data_dir, one_thread, method, stops):
    config, expected = reference
    bench = load_benchmark(config)
    cell = next(c for c in bench.cells() if c.method == method and c.seed == 0)
    run = dict(plugins=bench.plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False)
    for name, epoch in stops:
        with pytest.raises(Interrupted):
            train_cell(cell, checkpoints=StopAfter(tmp_path, cell, name, epoch), **run)
    checkpoints = CellCheckpoints(tmp_path, cell)
    result = train_cell(cell, checkpoints=checkpoints, **run).to_json()
    assert checkpoints.resumed == {stops[-1][0]: stops[-1][1], **({"left": 2} if method == "stl" else {})}
    assert result["provenance"]["resumed_after_epoch"] == checkpoints.resumed
    assert training_record(result) == training_record(expected[str(cell.relpath)])


def test_mitigated_cell_resumes_to_the_uninterrupted_result(tmp_path, data_dir, one_thread):
    """Sparse training's masks and frozen weights come from its `prepare` on the initial model,
    which runs again before the restore: the resumed cell still matches exactly."""
    toml = GRID_TOML.replace('methods = ["stl", "ew", "pcgrad", "broken", "crash"]', 'methods = ["pcgrad"]\nmitigations = ["st"]')
    bench = load_benchmark(make_project(tmp_path / "p", toml))
    cell = next(c for c in bench.cells() if c.seed == 0)
    run = dict(plugins=bench.plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False,
               cache_dir=tmp_path / ".cache")
    expected = train_cell(cell, **run).to_json()
    with pytest.raises(Interrupted):
        train_cell(cell, checkpoints=StopAfter(tmp_path, cell, "joint", 1), **run)
    result = train_cell(cell, checkpoints=CellCheckpoints(tmp_path, cell), **run).to_json()
    assert result["provenance"]["resumed_after_epoch"] == {"joint": 1}
    assert training_record(result) == training_record(expected)
    assert result["mitigation_report"] == expected["mitigation_report"] and result["mitigation_report"]["trainable_pct"] < 100


def test_checkpoint_of_another_config_is_ignored(reference, tmp_path, data_dir, one_thread):
    config, expected = reference
    bench = load_benchmark(config)
    cell = next(c for c in bench.cells() if c.method == "pcgrad" and c.seed == 0)
    other = next(c for c in bench.cells() if c.method == "pcgrad" and c.seed == 1)
    run = dict(plugins=bench.plugins, data_dir=data_dir, device=torch.device("cpu"), progress=False)
    with pytest.raises(Interrupted):
        train_cell(other, checkpoints=StopAfter(tmp_path, other, "joint", 1), **run)
    theirs = CellCheckpoints(tmp_path, other).folder / "joint.pt"
    ours = CellCheckpoints(tmp_path, cell)
    ours.folder.mkdir(parents=True)
    theirs.rename(ours.folder / "joint.pt")  # a checkpoint left under this cell's name by another config
    result = train_cell(cell, checkpoints=ours, **run).to_json()
    assert ours.resumed == {}
    assert training_record(result) == training_record(expected[str(cell.relpath)])


def _progress(results: Path) -> set:
    files = list(results.glob(".checkpoints/**/*.pt")) + list(results.glob("*/**/*.json"))
    out = set()
    for p in files:
        try:
            out.add((p, p.stat().st_mtime_ns))
        except FileNotFoundError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_grid_killed_at_random_moments_resumes_to_the_uninterrupted_results(reference, tmp_path):
    """SIGKILL `mtlbench run` soon after it makes progress (a checkpoint or a result), three
    times (once running a pool of worker processes, which must die with it); every kill leaves
    only complete result files; resuming finishes the grid with each result written once and
    equal to the uninterrupted run."""
    config, expected = reference
    results = tmp_path / "r"
    rng = random.Random(6)
    written: dict[Path, tuple] = {}
    kills = 0
    for attempt in range(3):
        pool = ["--device", "cpu", "--runs-per-device", "2"] if attempt == 1 else []  # once with worker processes
        before = _progress(results)
        proc = start_cli(run_args(config, results, *CELLS, *pool), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and _progress(results) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            break  # the grid finished before this kill
        time.sleep(rng.uniform(0.0, 0.6))
        holders = [lock.pid for lock in map(read_lock, results.glob(".locks/**/*.lock")) if lock and _alive(lock.pid)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if pool:  # the workers die with their runner: nothing trains on unseen
            assert holders and all(proc.pid != pid for pid in holders)
            deadline = time.monotonic() + 10
            while any(map(_alive, holders)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(map(_alive, holders))
        for path in results.glob("*/**/*.json"):
            assert validate_file(path) == [], path  # complete and valid, never partial
            stat = path.stat()
            assert written.setdefault(path, (stat.st_ino, stat.st_mtime_ns)) == (stat.st_ino, stat.st_mtime_ns)
    assert kills >= 3

    assert main(run_args(config, results, *CELLS)) == 0
    got = results_of(results)
    assert set(got) == {str(c.relpath) for c in load_benchmark(config).cells(None, {"method": {"stl", "pcgrad"}, "seed": {"0"}})}
    for name, result in got.items():
        assert result["status"] == "ok"
        assert training_record(result) == training_record(expected[name]), name
    for path, stat in written.items():  # a result, once written, is never written again
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stat
    assert any(r["provenance"]["resumed_after_epoch"] for r in got.values())
    assert leftovers(results) == []
    for cell in load_benchmark(config).cells(None, {"method": {"stl", "pcgrad"}, "seed": {"0"}}):
        assert log_path(results, cell).read_text().count("result written") <= 1
