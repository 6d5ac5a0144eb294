"""Grid throughput of the local executor: the same grid of tiny cells with k runs per device
(k = 1 vs 4 by default), and the cost of the GPU determinism option and of per-epoch
checkpoints.

Builds a throw-away project (the repo's tasks/ and baselines/, a suite of N tiny MultiMNIST
cells), runs it through ``run_cells`` once per setting into a fresh results folder, and prints
one row per setting: wall time, cells per minute, speed-up over the first setting, mean step
time and peak memory (from the result files). A last line times one checkpoint save and
restore of the backbone's full training state (model, Adam state, best-validation copy, RNG
states), the per-epoch price of crash-safe resume.

Usage: python bench/grid_throughput.py [--cells 8] [--runs-per-device 1 4] [--device auto]
       [--deterministic on off] [--checkpoint on off] [--backbone resnet18] [--epochs 1]
       [--samples 2048] [--batch 64]

On CPU, k > 1 runs k worker processes that share the cores (threads = cores / k) and
``--deterministic off`` changes nothing (CPU runs always use deterministic kernels). Timings
are wall-clock on whatever else the machine runs: compare rows of one invocation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtlbench.datasets.splits import data_root  # noqa: E402
from mtlbench.grid.config import load_benchmark  # noqa: E402
from mtlbench.grid.executor import ExecutorOptions, with_overrides  # noqa: E402
from mtlbench.run.runner import run_cells  # noqa: E402

BACKBONES = {
    "resnet18": 'model = "resnet18"\nstem = "3x3"',
    "resnet18-w16": 'model = "resnet18"\nkwargs = { channels = [16, 32, 64, 128] }',
}


def project(root: Path, args: argparse.Namespace) -> Path:
    for folder in ("tasks", "baselines"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "benchmark.toml").write_text(f"""
[backbones.bb]
{BACKBONES[args.backbone]}

[suites.bench]
backbones = ["bb"]
methods = ["{args.method}"]
seeds = {list(range(args.cells))}
conflict = {{ every = 0 }}

[suites.bench.tasks.multimnist]
epochs = {args.epochs}
batch_size = {args.batch}
optimizer = "adam"
lr = 0.001
max_train_samples = {args.samples}
""")
    return root / "benchmark.toml"


def measure(bench, results: Path, device: str, k: int, det: str, ck: str) -> dict:
    """Run every cell of ``bench`` into ``results`` with one setting; one row of the table."""
    options = with_overrides(ExecutorOptions(), {"devices": device, "runs_per_device": k,
                                                 "deterministic": det == "on", "checkpoint": ck == "on"})
    t0 = time.perf_counter()
    summary = run_cells(bench, bench.cells(), results, data_dir=data_root(), options=options, progress=False,
                        echo=lambda _: None)
    wall = time.perf_counter() - t0
    ok = [r for r in map(json.loads, (f.read_text() for f in results.rglob("*.json"))) if r["status"] == "ok"]
    return {
        "deterministic": det, "checkpoint": ck, "k": k, "device": ok[0]["provenance"]["device_name"] if ok else "-",
        "cells": f"{len(ok)}/{summary.total}", "wall_s": wall, "cells_per_min": 60 * len(ok) / wall,
        "step_ms": statistics.fmean(r["cost"]["step_time_ms"] for r in ok) if ok else float("nan"),
        "peak_mb": max(r["cost"]["peak_memory_mb"] for r in ok) if ok else float("nan"),
    }


def checkpoint_cost(bench, repeat: int = 5) -> dict:
    """Median save / restore time of one epoch checkpoint of a cell of ``bench``."""
    import torch

    from mtlbench.train.cell import build_model
    from mtlbench.train.checkpoint import CellCheckpoints
    from mtlbench.train.trainer import FitOutput, make_optimizer

    cell = bench.cells()[0]
    task = bench.plugins.tasks[cell.task](**cell.task_options)
    model = build_model(task, cell.backbone_spec, list(task.tasks))
    opt = make_optimizer(list(model.parameters()), cell.protocol)
    outputs = model(torch.randn(2, *task.input_shape))
    sum(o.sum() for o in outputs.values()).backward()
    opt.step()  # the optimiser state exists from the first step on
    state = {"model": model, "optimizer": opt, "data_order": torch.Generator(), "out": FitOutput(epochs=[{}])}
    best = (0.0, 1, {k: v.clone() for k, v in model.state_dict().items()})
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = CellCheckpoints(Path(tmp), cell).model("joint")
        save, restore = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            checkpoint.save(state, 1, 1, best)
            save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checkpoint.restore(state)
            restore.append(time.perf_counter() - t0)
        size = checkpoint.path.stat().st_size
    return {"params": sum(p.numel() for p in model.parameters()), "mb": size / 2**20,
            "save_ms": 1000 * statistics.median(save), "restore_ms": 1000 * statistics.median(restore)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--runs-per-device", type=int, nargs="+", default=[1, 4])
    p.add_argument("--device", default="auto")
    p.add_argument("--deterministic", choices=["on", "off"], nargs="+", default=["on"])
    p.add_argument("--checkpoint", choices=["on", "off"], nargs="+", default=["on"])
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    p.add_argument("--method", default="ew")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = project(Path(tmp) / "proj", args)
        bench = load_benchmark(config)
        settings = [(det, ck, k) for det in args.deterministic for ck in args.checkpoint for k in args.runs_per_device]
        rows = [measure(bench, Path(tmp) / f"results-{i}", args.device, k, det, ck)
                for i, (det, ck, k) in enumerate(settings)]  # a setting may repeat: fresh folders
        cost = checkpoint_cost(bench)
    base = rows[0]["cells_per_min"]
    print(f"grid: {args.cells} cells of {args.method} on {args.backbone}, {args.epochs} epoch(s) x "
          f"{args.samples // args.batch} steps of batch {args.batch}; device option {args.device!r}")
    print(f"{'determ.':<8} {'ckpt':<5} {'runs/dev':>8} {'cells':>6} {'wall s':>8} {'cells/min':>10} {'speed-up':>9} "
          f"{'step ms':>8} {'peak MB':>8}  device")
    for r in rows:
        print(f"{r['deterministic']:<8} {r['checkpoint']:<5} {r['k']:>8} {r['cells']:>6} {r['wall_s']:>8.1f} "
              f"{r['cells_per_min']:>10.2f} {r['cells_per_min'] / base:>8.2f}x {r['step_ms']:>8.1f} {r['peak_mb']:>8.0f}"
              f"  {r['device']}")
    print(f"\ncheckpoint of one epoch ({args.backbone}, {cost['params'] / 1e6:.2f}M parameters, Adam): "
          f"{cost['mb']:.1f} MB, save {cost['save_ms']:.0f} ms, restore {cost['restore_ms']:.0f} ms (median of 5)")


if __name__ == "__main__":
    main()
