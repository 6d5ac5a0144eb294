"""One run over N processes (``--processes-per-run``) against one process: per-step time on this
machine's CPUs, and what a run exchanges per step as T and P grow (what a GPU cluster would pay).

Times: the same MultiMNIST cells (ResNet-18 at width 16, whose 21 batch norms each exchange their
statistics in the forward and the backward pass, and a 4-block ViT, which has none; batch 64) trained for a few steps with
N = 1 on ``--cores`` threads and with N = 2 on ``--cores`` / 2 threads each (the same cores), the
median step time the result file records (conflict statistics off). Bytes: per optimiser step,
the floats all-reduced (float32, 4 bytes) by each method kind (mtlbench.train.distributed):
a gradient method the (T, P) matrix of the shared parameters and the heads' gradients, a loss
weighting every parameter's gradient once, both the T losses and each batch norm's statistics
(channels x 2 + 1, forward and backward). Run it with nothing else on the machine:

    python bench/ddp_step.py --cores 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOML = """
[backbones.resnet18-w16]
model = "resnet18"
kwargs = {{ channels = [16, 32, 64, 128] }}

[backbones.vit-t4]
model = "vit_tiny_patch16_224"
kwargs = {{ img_size = 36, patch_size = 12, depth = 4, embed_dim = 128, num_heads = 4 }}

[suites.bench]
backbones = {backbones}
methods = {methods}
mitigations = ["none"]
seeds = [0]
conflict = {{ every = 0 }}

[suites.bench.tasks.multimnist]
epochs = 1
batch_size = 64
optimizer = "adam"
lr = 0.001
max_train_samples = {samples}
"""


BACKBONES = ["resnet18-w16", "vit-t4"]  # with 21 batch norms; with none (layer norms)


def step_times(methods: list[str], processes: int, threads: int, samples: int) -> dict[tuple[str, str], float]:
    """Median step time (ms) of each (backbone, method) cell, trained with ``processes`` ranks."""
    with tempfile.TemporaryDirectory(prefix="mtlbench-ddp-bench-") as tmp:
        project = Path(tmp) / "proj"
        project.mkdir()
        for folder in ("tasks", "baselines"):
            subprocess.run(["cp", "-r", str(ROOT / folder), str(project / folder)], check=True)
        (project / "benchmark.toml").write_text(
            TOML.format(methods=json.dumps(methods), samples=samples, backbones=json.dumps(BACKBONES))
        )
        results = Path(tmp) / "results"
        command = [sys.executable, "-m", "mtlbench", "run", "--config", str(project / "benchmark.toml"), "--suite", "bench"]
        command += ["--results", str(results), "--threads", str(threads), "--processes-per-run", str(processes)]
        subprocess.run([*command, "--no-progress", "--no-checkpoint"], check=True, capture_output=True)
        out = {}
        for path in results.rglob("*.json"):
            if any(part.startswith(".") for part in path.relative_to(results).parts):
                continue
            data = json.loads(path.read_text())
            out[(data["backbone"], data["method"])] = float(data["cost"]["step_time_ms_median"])
        return out


def exchanged_bytes(n_tasks: int, shared: int, heads: int, bn_channels: list[int]) -> dict[str, int]:
    """Bytes all-reduced per optimiser step by each method kind (float32)."""
    norms = sum(2 * c + 1 for c in bn_channels) * 2  # statistics forward, their gradients backward
    losses = n_tasks
    return {
        "loss weighting": 4 * (shared + heads + losses + norms),
        "gradient method": 4 * (n_tasks * shared + heads + losses + norms * n_tasks),  # one backward per task
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2, help="threads of the 1-process run; split between 2 ranks")
    parser.add_argument("--methods", default="ew,pcgrad")
    parser.add_argument("--samples", type=int, default=1280, help="training pairs (20 steps of 64)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    one = step_times(methods, 1, args.cores, args.samples)
    two = step_times(methods, 2, max(1, args.cores // 2), args.samples)
    print(f"Per-step time, MultiMNIST, batch 64 ({args.cores} cores; median over the cell's steps)\n")
    print("| backbone | method | 1 process | 2 processes | ratio |")
    print("|---|---|---|---|---|")
    for key in sorted(one):
        print(f"| {key[0]} | {key[1]} | {one[key]:.1f} ms | {two[key]:.1f} ms | {two[key] / one[key]:.2f} |")

    import torch

    from mtlbench.backbones.build import build_multitask_model
    from mtlbench.core.spec import BackboneSpec
    from mtlbench.grid.plugins import discover

    task = discover(ROOT).tasks["multimnist"]()
    spec = BackboneSpec("resnet18-w16", "resnet18", {"channels": [16, 32, 64, 128]})
    model = build_multitask_model(spec, task.input_shape, task.representation, list(task.tasks), task.build_head)
    shared = sum(p.numel() for _, ps in model.shared_layers() for p in ps)
    heads = sum(p.numel() for t in task.tasks for p in model.task_parameters(t))
    channels = [m.num_features for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    print(f"\nAll-reduced per step, this trunk (P = {shared:,} shared parameters, {len(channels)} batch norms):\n")
    print("| T | loss weighting | gradient method |")
    print("|---|---|---|")
    for t in (2, 11, 40):
        b = exchanged_bytes(t, shared, heads * t // 2, channels)
        print(f"| {t} | {b['loss weighting'] / 1e6:.2f} MB | {b['gradient method'] / 1e6:.2f} MB |")
    print("\n(heads scaled from this task's two; a gradient method's bytes grow as T x P, a loss weighting's as P)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
