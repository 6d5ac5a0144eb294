"""Cost of every method: time per training step and peak memory, relative to EW, on the
benchmark's backbones with T synthetic classification tasks, for each per-task gradient strategy.

Each step is the trainer's own step (``mtlbench.train.cell``'s forward/backward helpers, the
method's clipping and after-step hook, an Adam step) on a fixed random batch. Two reference
costs are measured on the same model: EW (one forward + one backward) and "fwd + T bwd" (one
forward + T single-task backward passes, the per-task gradient loop with no method, their sum
written as the update and the same Adam step: the floor of any per-task-gradient method). Targets
(issue 3): a per-task-gradient method at most 1.1 x "fwd + T bwd"; a loss-weighting method at
most 1.05 x EW.

    python bench/method_cost.py                       # the full grid (hours on a CPU)
    python bench/method_cost.py --tasks 2,3 --backbones resnet18-w16 --rounds 3

Prints a table and writes it as CSV and Markdown (``--out``, default ``bench/results/``).
Timings on a shared CPU are noisy: compare ratios within one run, not absolute times.
"""

from __future__ import annotations

import argparse
import csv
import functools
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtlbench.api import LastLayerBayes, Method, MultiSampleAggregator, StepInfo, Task  # noqa: E402
from mtlbench.backbones.build import build_trunk  # noqa: E402
from mtlbench.grid.config import load_benchmark  # noqa: E402
from mtlbench.plugin.method import build_method  # noqa: E402
from mtlbench.plugin.model import HardSharingModel  # noqa: E402
from mtlbench.train.conflict import ConflictRecorder  # noqa: E402
from mtlbench.train.gradients import (  # noqa: E402
    STRATEGIES,
    assign_flat_grad,
    clip_grad_norm,
    default_strategy,
    task_gradients,
)
from mtlbench.train.provenance import PeakMemory  # noqa: E402
from mtlbench.train.strategies import ConflictProbe, StepContext, StepInputs, strategy_for  # noqa: E402
from mtlbench.train.trainer import losses_after_step as _losses_after_step  # noqa: E402
from mtlbench.train.trainer import task_losses  # noqa: E402

INPUT = (1, 36, 36)


class Synthetic(Task):
    """T ten-way classification tasks on random images (cost only: nothing is learned)."""

    name = "synthetic"
    metrics = ()

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.tasks = tuple(f"t{i}" for i in range(n_tasks))
        self.likelihoods = {t: "categorical" for t in self.tasks}  # ten logits, cross-entropy

    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, 10)

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)


def make_step(model: HardSharingModel, task: Synthetic, method: Method | None, strategy: tuple[str, int],
              batch: tuple[torch.Tensor, dict[str, torch.Tensor]], reference: bool = False):
    """One training step as the trainer runs it; ``reference``: forward + T backward, no method."""
    tasks = list(task.tasks)
    layers = model.shared_layers()
    shared = [p for _, ps in layers for p in ps]
    heads = [model.task_parameters(t) for t in tasks]
    sizes = [sum(p.numel() for p in ps) for _, ps in layers]
    recorder = ConflictRecorder(tasks, [n for n, _ in layers], sizes, every=0)  # conflict sampling off
    params = list(model.parameters()) + (list(method.parameters()) if method is not None else [])
    opt = torch.optim.Adam(params, lr=1e-4)
    update = strategy_for(method)
    context = StepContext(shared, heads, strategy, lambda g: g, ConflictProbe(recorder, None, lambda g: g))
    generator = torch.Generator().manual_seed(0)
    x, y = batch
    counter = [0]
    # a Bayesian last-layer method past its warm-up: one batch of an earlier epoch to condition on,
    # then every step in the same epoch (its per-epoch posterior once, in the warm-up rounds)
    steady = getattr(method, "warmup_epochs", 1) if isinstance(method, LastLayerBayes) else None
    if isinstance(method, LastLayerBayes):
        with torch.no_grad():
            method.collect(model.encode(x).flatten(1), [y[t] for t in tasks],
                           StepInfo(step=0, epoch=steady - 1, steps_per_epoch=1, total_steps=10**6))

    def apply() -> None:  # the trainer's update: clipping and the optimizer's step
        clip_grad_norm(shared, method.max_norm if method is not None else 0.0)
        opt.step()

    def step() -> None:
        info = StepInfo(step=counter[0], epoch=counter[0] if steady is None else steady, steps_per_epoch=1,
                        total_steps=10**6, generator=generator, layer_sizes=update.layer_sizes(tuple(sizes)))
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        # a multi-sample method's S batches: here the same batch S times, each its own pass
        per_sample = []
        for _ in range(update.samples_per_step):
            outputs = update.outputs(model, x)
            per_sample.append(task_losses(task, tasks, outputs, y))
        losses = per_sample[0]
        if isinstance(method, MultiSampleAggregator):
            context.probe.begin(info.step, losses)
            update.fill_gradients(per_sample, info, context)
            opt.step()
        elif reference:  # the floor: T backward passes, their sum as the update, the same optimizer step
            matrix, private = task_gradients(list(losses), shared, heads, strategy="loop")
            assign_flat_grad(shared, matrix.sum(0))
            for ps, gs in zip(heads, private):
                for p, g in zip(ps, gs):
                    p.grad = g
            opt.step()
        else:
            if update.needs_inputs:  # a look-ahead's meta batch: here the same batch
                losses_of = functools.partial(task_losses, task, tasks)
                context.inputs = StepInputs(model, opt, losses_of, (x, y), (x, y), apply, tasks,
                                            [task.likelihoods.get(t) for t in tasks])
            context.probe.begin(info.step, losses)
            update.fill_gradients(per_sample, info, context)
            apply()
            if method.wants_losses_after_step:
                _losses_after_step(model, task, tasks, method, x, y, info)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    return step


def measure(steps: dict[str, Any], device: torch.device, warmup: int,
            rounds: int) -> tuple[dict[str, tuple[float, float | None]], dict[str, list[float]]]:
    """Median seconds per step and peak memory (MB) of each named step function.

    The functions run interleaved, round after round (EW, reference, method, EW, ...), so that
    a slow spell of a shared machine hits all of them alike; ratios are taken per round."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    peaks: dict[str, float | None] = {}
    for _ in range(rounds):
        for name, fn in steps.items():
            memory = PeakMemory(device)
            memory.start()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            peak = memory.peak_mb()[0]
            peaks[name] = max(peaks.get(name) or 0.0, peak or 0.0) or None
    return {k: (statistics.median(v), peaks[k]) for k, v in times.items()}, times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    bench = load_benchmark(ROOT / "benchmark.toml")
    methods = bench.plugins.methods
    names = [n for n in sorted(methods) if methods[n].kind != "single_task"]
    if args.methods:
        names = [n for n in names if n in args.methods.split(",") or n == "ew"]
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    for backbone in args.backbones.split(","):
        spec = bench.backbones[backbone]
        for n_tasks in (int(t) for t in args.tasks.split(",")):
            task = Synthetic(n_tasks)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(args.batch_size, *INPUT, generator=gen).to(device)
            y = {t: torch.randint(0, 10, (args.batch_size,), generator=gen).to(device) for t in task.tasks}
            torch.manual_seed(0)
            trunk, dim = build_trunk(spec, INPUT)
            model = HardSharingModel(trunk, {t: task.build_head(t, dim) for t in task.tasks}).to(device).train()
            strategies = args.strategies.split(",")

            def step_fn(method_name: str | None, strategy: tuple[str, int], reference: bool = False):
                method = build_method(methods, method_name, n_tasks).to(device) if method_name else None
                return make_step(model, task, method, strategy, (x, y), reference)

            ew_step = step_fn("ew", default_strategy(device, n_tasks))
            ref_step = step_fn(None, ("loop", 1), reference=True)
            for name in names:
                cls = methods[name]
                for strategy in (strategies if cls.kind == "gradient" else ["-"]):
                    chunk = min(n_tasks, args.chunk) if strategy in ("batched", "torchjd") else 1
                    resolved = (strategy, chunk) if strategy != "-" else default_strategy(device, n_tasks)
                    error = ""
                    try:
                        stats, times = measure({"ew": ew_step, "ref": ref_step, "method": step_fn(name, resolved)},
                                               device, args.warmup, args.rounds)
                    except Exception as e:  # a method that cannot run here is reported, not hidden
                        stats, times, error = {}, {}, f"{type(e).__name__}: {e}"[:80]
                    nan = float("nan")
                    t, mem = stats.get("method", (nan, None))
                    ew_t, ew_mem = stats.get("ew", (nan, None))
                    x_ew = median_ratio(times["method"], times["ew"]) if times else nan
                    x_ref = median_ratio(times["method"], times["ref"]) if times else nan
                    target, limit = (x_ref, 1.1) if cls.kind == "gradient" else (x_ew, 1.05)
                    row = {"backbone": backbone, "T": n_tasks, "method": name, "kind": cls.kind, "strategy": strategy,
                           "chunk": chunk, "step_ms": 1000 * t, "x_ew": x_ew, "x_target_ref": target,
                           "meets_target": bool(target <= limit), "peak_mb": mem,
                           "peak_x_ew": (mem / ew_mem) if mem and ew_mem else None,
                           "ew_ms": 1000 * ew_t, "fwd_T_bwd_ms": 1000 * stats.get("ref", (nan, None))[0], "error": error}
                    rows.append(row)
                    print(format_row(row), flush=True)
    return rows


COLUMNS = ("backbone", "T", "method", "kind", "strategy", "chunk", "step_ms", "x_ew", "x_target_ref",
           "meets_target", "peak_mb", "peak_x_ew", "ew_ms", "fwd_T_bwd_ms", "error")


def format_row(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " | ".join(f(r[c]) for c in COLUMNS)


def save(rows: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "method_cost.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Method cost ({args.device}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, median over {args.rounds} interleaved rounds)",
        "",
        "x_ew, x_target_ref: medians of per-round ratios to EW and to one forward + T single-task "
        "backward passes (gradient methods; EW for loss weighting). Targets: <= 1.1 and <= 1.05. "
        "peak_mb: CUDA max allocated, or the process's peak RSS on CPU.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + format_row(r) + " |" for r in rows]
    (out / "method_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'method_cost.csv'} and {out / 'method_cost.md'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="resnet18-w16,vit-t4", help="backbone ids of benchmark.toml")
    p.add_argument("--tasks", default="2,3,10,40", help="numbers of synthetic tasks")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="per-task gradient strategies to compare")
    p.add_argument("--methods", default="", help="comma-separated subset (EW is always measured)")
    p.add_argument("--chunk", type=int, default=8, help="rows per chunk for the batched strategies")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (EW, reference, method interleaved)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    print(" | ".join(COLUMNS))
    rows = run(args)
    save(rows, Path(args.out), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
