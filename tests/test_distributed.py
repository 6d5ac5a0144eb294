"""One cell trained by 2 processes (gloo, each on half of every batch) against the same cell in
one process: the results agree up to floating-point reduction order, for loss weightings,
gradient methods (with their random draws), a representation-gradient method, a multi-sample
method and the single-task baseline, with Recon and ST, on a ResNet whose batch norms are
synchronised. Also: the kinds a run over several processes cannot reproduce are refused with
the reason, and a rank that raises or is killed fails the cell with its own error instead of hanging.

Tolerances, from the runs that set them (4 steps, float32): training losses agree to 2.2e-7
relative, validation and test metrics exactly; the whole-model pairwise cosines of the conflict
statistics to 5.5e-5 absolute (per-layer cosines of the smallest layers drift more and are not
compared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.core.files import iter_result_files
from tests.conftest import commit_all, make_project

TOML = """
default_suite = "ddp"

[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.ddp]
backbones = ["r8"]
methods = ["stl", "ew", "famo", "uw", "pcgrad", "mgda", "nash-mtl", "graddrop", "mgda-ub", "sdmgrad"]
mitigations = ["none"]
seeds = [0]
conflict = { every = 1 }

[suites.ddp.tasks.multimnist]
epochs = 1
batch_size = 32
optimizer = "adam"
lr = 0.002
max_train_samples = 128
eval_batch_size = 512

[suites.ddp-mit]
backbones = ["r8"]
methods = ["ew", "pcgrad"]
mitigations = [{ name = "recon", options = { k = 3, search_steps = 2 } }, { name = "st", options = { fraction = 0.6 } }]
seeds = [0]
conflict = { every = 1 }
exclude = [{ method = "ew", mitigation = "recon" }, { method = "pcgrad", mitigation = "st" }]

[suites.ddp-mit.tasks.multimnist]
epochs = 1
batch_size = 32
optimizer = "adam"
lr = 0.002
max_train_samples = 128
eval_batch_size = 512

[suites.refused]
backbones = ["r8"]
methods = ["auto-lambda", "rankfail", "rankdie"]
mitigations = ["none"]
seeds = [0]

[suites.refused.tasks.multimnist]
epochs = 1
batch_size = 32
optimizer = "adam"
lr = 0.002
max_train_samples = 64
"""

# methods whose rank 1 raises or is killed (rank 0 then fails in its next collective)
RANK_FAIL = '''
import os
import signal

import torch
import torch.distributed as dist
from mtlbench.api import GradientAggregator


class RankFail(GradientAggregator):
    """Sums the task gradients, but raises on rank 1 of a run over several processes."""
    name = "rankfail"
    description = "fails on rank 1"
    citation = "none"

    def aggregate(self, grads, losses, info):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("rank one gives up")
        return grads.sum(0)


class RankDie(GradientAggregator):
    """Sums the task gradients, but rank 1 of a run over several processes is killed."""
    name = "rankdie"
    description = "rank 1 is killed"
    citation = "none"

    def aggregate(self, grads, losses, info):
        if dist.is_initialized() and dist.get_rank() == 1 and info.step == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return grads.sum(0)
'''


def project_with_rankfail(root: Path, toml: str = TOML) -> Path:
    """A project with this module's suites and the method that fails on rank 1."""
    config = make_project(root, toml)
    (root / "baselines" / "rankfail.py").write_text(RANK_FAIL)
    commit_all(root)
    return config


def results_by_row(folder: Path) -> dict[tuple[str, str, str], dict]:
    """(suite, method, mitigation) -> result, of the result files under ``folder``."""
    out = {}
    for path in iter_result_files([folder]):
        data = json.loads(path.read_text())
        out[(data["suite"], data["method"], data["mitigation"])] = data
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    config = project_with_rankfail(root / "proj")
    one, two = root / "one", root / "two"
    for results, extra in ((one, []), (two, ["--processes-per-run", "2"])):
        argv = ["run", "--config", str(config), "--suite", "ddp", "--suite", "ddp-mit", "--results", str(results)]
        assert main([*argv, "--threads", "1", "--no-progress", *extra]) == 0
    return config, one, two


def assert_same_runs(single: dict, several: dict, world_size: int) -> None:
    """Results of the same cells in one process and over ``world_size`` processes agree (module
    docstring: the tolerances)."""
    assert set(single) == set(several)
    for key, a in single.items():
        b = several[key]
        assert a["status"] == b["status"] == "ok", key
        assert a["config_hash"] == b["config_hash"]  # the same cell, run another way
        assert "world_size" not in a["provenance"] and b["provenance"]["world_size"] == world_size
        for split in ("val", "test"):
            assert b["metrics"][split] == pytest.approx(a["metrics"][split], rel=0, abs=1e-12), key
        for model, epochs in a["curves"].items():
            for ea, eb in zip(epochs, b["curves"][model], strict=True):
                assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-5), key
        if a["conflict"] is not None:
            ca, cb = a["conflict"]["series"], b["conflict"]["series"]
            assert ca["step"] == cb["step"] and len(ca["step"]) == 4
            for ra, rb in zip(ca["pair_cos"], cb["pair_cos"]):
                assert rb == pytest.approx(ra, abs=1e-4), key


def test_two_processes_equal_one(runs):
    config, one, two = runs
    single, double = results_by_row(one), results_by_row(two)
    assert len(single) == 12
    assert_same_runs(single, double, 2)
    assert main(["validate", str(two), "--config", str(config)]) == 0


def test_results_of_two_processes_aggregate_with_single_process_ones(runs, tmp_path):
    """A suite whose baseline ran in one process and whose methods ran over two: one table."""
    from mtlbench.report.aggregate import load_results, run_delta_m

    _, one, two = runs
    mixed = tmp_path / "mixed"
    for folder, keep in ((one, lambda d: d["method"] == "stl"), (two, lambda d: d["method"] != "stl")):
        for path in iter_result_files([folder]):
            data = json.loads(path.read_text())
            if data["suite"] == "ddp" and keep(data):
                target = mixed / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text())
    loaded = load_results([mixed])
    assert loaded.problems == [] and len(loaded.runs) == 10
    runs_dm = run_delta_m(loaded)
    methods = runs_dm[~runs_dm["is_baseline"]]
    assert len(methods) == 9 and methods["dm_flat"].notna().all()


def test_unsupported_kind_and_a_failing_rank_fail_the_cell(tmp_path):
    config = project_with_rankfail(tmp_path / "proj")
    results = tmp_path / "results"
    argv = ["run", "--config", str(config), "--suite", "refused", "--results", str(results), "--threads", "1"]
    assert main([*argv, "--no-progress", "--processes-per-run", "2"]) == 1  # cells failed, the grid went on
    found = results_by_row(results)
    refused = found[("refused", "auto-lambda", "none")]
    assert refused["status"] == "failed"
    assert "does not support that kind" in refused["reason"] and "processes_per_run = 1" in refused["reason"]
    failed = found[("refused", "rankfail", "none")]
    assert failed["status"] == "failed"
    assert "rank 1 failed: RuntimeError: rank one gives up" in failed["reason"]
    killed = found[("refused", "rankdie", "none")]
    assert killed["status"] == "failed" and "rank 1 failed: exit status -9" in killed["reason"], killed["reason"]


def test_batch_must_split_into_equal_shards(tmp_path):
    section = 'batch_size = 32\noptimizer = "adam"\nlr = 0.002\nmax_train_samples = 64'
    assert TOML.count(section) == 1
    config = project_with_rankfail(tmp_path / "proj", TOML.replace(section, section.replace("32", "30")))
    results = tmp_path / "results"
    argv = ["run", "--config", str(config), "--suite", "refused", "--only", "method=rankfail", "--results", str(results)]
    assert main([*argv, "--threads", "1", "--no-progress", "--processes-per-run", "4"]) == 1
    (failed,) = results_by_row(results).values()
    assert failed["status"] == "failed" and "batch_size 30 cannot be split into 4 equal shards" in failed["reason"]


def test_a_killed_run_over_two_processes_resumes_to_the_uninterrupted_result(tmp_path):
    """The runner (rank 0) killed mid-cell takes its other rank with it; run again, both ranks
    restore rank 0's last checkpoint and the cell ends with the uninterrupted run's numbers."""
    import signal
    import subprocess
    import time

    from tests.grid_support import results_of, start_cli, training_record

    section = 'epochs = 1\nbatch_size = 32\noptimizer = "adam"\nlr = 0.002\nmax_train_samples = 128'
    config = project_with_rankfail(
        tmp_path / "proj", TOML.replace(section, section.replace("1\n", "3\n", 1).replace("128", "256"), 1)
    )
    argv = ["run", "--config", str(config), "--suite", "ddp", "--only", "method=pcgrad", "--threads", "1", "--no-progress"]
    two = [*argv, "--processes-per-run", "2"]
    assert main([*two, "--results", str(tmp_path / "whole")]) == 0
    results = tmp_path / "killed"
    runner = start_cli([*two, "--results", str(results)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, saved = time.monotonic() + 120, results / ".checkpoints"
    while not (saved.is_dir() and any(saved.rglob("*.pt"))):
        assert runner.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    assert not results_of(results), "the cell finished before it was killed"
    assert main([*two, "--results", str(results)]) == 0
    ((name, resumed),) = results_of(results).items()
    assert resumed["provenance"]["resumed_after_epoch"] and resumed["provenance"]["world_size"] == 2
    assert training_record(resumed) == training_record(results_of(tmp_path / "whole")[name])
