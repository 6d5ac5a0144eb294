"""The GPU check: what a session lent a GPU runs in one go (about 8 minutes on one H200) to
measure the CUDA paths no CPU run covers. Prints one table and writes it to
bench/results/gpu_check.{md,json}.

1. determinism: a slice of the default suite (resnet18-w16, every method, seed 0) run twice on
   CUDA with deterministic kernels: are the result files' test metrics bit-identical? Then once
   with determinism off (its wall time beside the deterministic one).
2. runs per GPU: the same cells with 1 and with 4 runs sharing the GPU: cells per hour.
3. dense steps: one SegNet-MTAN training step at NYUv2's shape (3x288x384, batch 2) and at
   CityScapes' (3x128x256, batch 8), summed losses and per-task gradients, and the GPU-hours
   each paper preset projects from them (training steps only: cells x epochs x steps per epoch).
4. T = 40 (CelebA-shaped: ResNet18 on 3x64x64, batch 256, 40 binary tasks): the per-task
   gradient step by loop / batched / torchjd, time and peak memory, against EW's.
5. CUDA out of memory: a cell run with the process's GPU memory capped far below its need is
   recorded as a failed cell with the reason, and the runner goes on.

    python bench/gpu_check.py                 # on a CUDA machine
    python bench/gpu_check.py --device cpu --smoke   # the script's own check, on a CPU, in a minute

The device tool's README says how to carry the wheels a bare GPU image lacks (datasets,
torchjd, mlxtend, torch_geometric).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtlbench.backbones.build import build_trunk  # noqa: E402
from mtlbench.core.spec import BackboneSpec  # noqa: E402
from mtlbench.grid.config import load_benchmark  # noqa: E402
from mtlbench.plugin.model import HardSharingModel  # noqa: E402
from mtlbench.train.gradients import task_gradients  # noqa: E402

ROWS: list[dict[str, Any]] = []
# training images after the 10% validation hold-out (NYUv2 795, CityScapes 2,975 official)
TRAIN_IMAGES = {"nyuv2": 716, "cityscapes": 2678}
SHAPES = {"nyuv2": ((3, 288, 384), 2), "cityscapes": ((3, 128, 256), 8)}


def row(part: str, what: str, value: Any, note: str = "") -> None:
    ROWS.append({"part": part, "what": what, "value": value, "note": note})
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{part:<14} {what:<58} {shown:>14}  {note}", flush=True)


def cli(args: list[str], env: dict[str, str] | None = None, prefix: str = "") -> float:
    """Run ``mtlbench`` in a fresh process (``prefix``: Python run first); its wall seconds."""
    code = prefix + "import sys; from mtlbench.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=False, env={**os.environ, **(env or {})},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def metrics_of(folder: Path) -> dict[str, Any]:
    out = {}
    for p in sorted(folder.rglob("*.json")):
        if ".cache" in p.parts:
            continue
        r = json.loads(p.read_text())
        out[p.name] = (r.get("status"), r.get("metrics", {}).get("test"))
    return out


def part_determinism_and_packing(device: str, smoke: bool, tmp: Path) -> None:
    only = ["--only", "backbone=resnet18-w16", "--only", "seed=0"] + (["--only", "method=ew,pcgrad"] if smoke else [])
    base = ["run", "--suite", "default", "--device", device, "--no-progress", "--no-checkpoint", *only]
    walls = {}
    for name, extra in (("det-1", ["--deterministic"]), ("det-2", ["--deterministic"]), ("nondet", ["--no-deterministic"])):
        walls[name] = cli([*base, *extra, "--results", str(tmp / name)])
    a, b = metrics_of(tmp / "det-1"), metrics_of(tmp / "det-2")
    ok = bool(a) and all(s == "ok" for s, _ in a.values())
    row("determinism", f"{len(a)} cells twice, deterministic: test metrics identical", ok and a == b)
    row("determinism", "wall s, deterministic (first run)", walls["det-1"])
    row("determinism", "wall s, determinism off", walls["nondet"], f"x{walls['nondet'] / walls['det-1']:.2f}")
    cells = len(a)
    for k in (1, 4):
        wall = cli([*base, "--no-deterministic", "--runs-per-device", str(k), "--results", str(tmp / f"pack{k}")])
        row("runs per GPU", f"{k} run(s) sharing the device: cells per hour", 3600 * cells / wall, f"{cells} cells in {wall:.0f} s")


def median_ms(fn: Callable[[], None], n: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan


def part_dense(device: torch.device, smoke: bool) -> None:
    from mtlbench.grid.plugins import discover
    from mtlbench.train.cell import build_model

    bench = load_benchmark(ROOT / "benchmark.toml")
    tasks = discover(ROOT).tasks
    step_ms: dict[tuple[str, str], float] = {}
    for name, ((c, h, w), batch) in SHAPES.items():
        if smoke:
            h, w = 64, 64
        task = tasks[name]()
        torch.manual_seed(0)
        widths = {"widths": [4, 8, 8, 16, 16]} if smoke else {}
        model = build_model(task, BackboneSpec("m", "segnet_mtan", widths), list(task.tasks)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(batch, c, h, w, device=device)
        y = {"segmentation": torch.randint(0, 7, (batch, h, w), device=device),
             "depth": torch.rand(batch, 1, h, w, device=device) + 0.1,
             "normal": torch.nn.functional.normalize(torch.randn(batch, 3, h, w, device=device), dim=1)}
        shared, heads = model.shared_parameters(), [model.task_parameters(t) for t in task.tasks]
        for update in ("sum", "per-task"):
            def step() -> None:
                opt.zero_grad(set_to_none=True)
                out = model(x)
                losses = [task.loss(t, out[t], y[t]) for t in task.tasks]
                if update == "sum":
                    sum(losses).backward()
                else:
                    task_gradients(losses, shared, heads, strategy="batched" if device.type == "cuda" else "loop",
                                   chunk_size=len(losses))
                opt.step()

            peak_reset(device)
            ms = median_ms(step, 3 if smoke else 10, device)
            step_ms[name, update] = ms
            row("dense step", f"segnet_mtan {name} {c}x{h}x{w} batch {batch}, {update}", ms, f"peak {peak_mb(device):.0f} MB")
    methods = bench.plugins.methods
    for suite in ("nash-nyuv2", "nash-cityscapes", "st-mtan", "recon-nyuv2", "recon-cityscapes", "libmtl-nyuv2"):
        hours = 0.0
        for cell in bench.cells([suite]):
            if cell.backbone_spec.model not in ("segnet_mtan", "segnet") or cell.task not in SHAPES:
                continue
            # a plain SegNet cell (recon-cityscapes) is costed at SegNet-MTAN's rate: an upper bound
            kind = methods[cell.method].kind
            update = "per-task" if kind == "gradient" else "sum"
            n_models = len(tasks[cell.task].tasks) if kind == "single_task" else 1
            steps = TRAIN_IMAGES[cell.task] // cell.protocol.batch_size * cell.protocol.epochs
            hours += n_models * steps * step_ms[cell.task, update] / 1000 / 3600
        note = "training steps only (no evaluation, Recon search or T streams); stl = one model per task"
        row("GPU-hours", f"preset {suite}", hours, note)


def part_t40(device: torch.device, smoke: bool) -> None:
    n_tasks, batch, size = (8, 16, 32) if smoke else (40, 256, 64)
    torch.manual_seed(0)
    trunk, dim = build_trunk(BackboneSpec("r", "resnet18", {}, stem="3x3" if not smoke else "default"), (3, size, size))
    model = HardSharingModel(trunk, {f"t{i}": torch.nn.Linear(dim, 2) for i in range(n_tasks)}).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    ys = [torch.randint(0, 2, (batch,), device=device) for _ in range(n_tasks)]
    shared = model.shared_parameters()
    heads = [model.task_parameters(f"t{i}") for i in range(n_tasks)]

    def losses() -> list[torch.Tensor]:
        out = model(x)
        return [torch.nn.functional.cross_entropy(out[f"t{i}"], ys[i]) for i in range(n_tasks)]

    def ew() -> None:
        model.zero_grad(set_to_none=True)
        sum(losses()).backward()

    peak_reset(device)
    ew_ms = median_ms(ew, 3, device)
    ew_peak = peak_mb(device)
    row("T=40 step", f"EW (T={n_tasks}, batch {batch}, 3x{size}x{size})", ew_ms, f"peak {ew_peak:.0f} MB")
    for strategy, chunk in (("loop", 1), ("batched", 8), ("torchjd", 8)):
        try:
            peak_reset(device)
            ms = median_ms(lambda: task_gradients(losses(), shared, heads, strategy=strategy, chunk_size=chunk), 3, device)
            peak = peak_mb(device)
            row("T=40 step", f"per-task gradients, {strategy} (chunk {chunk})", ms,
                f"x{ms / ew_ms:.2f} EW time; peak {peak:.0f} MB = x{peak / ew_peak:.2f} EW" if device.type == "cuda" else
                f"x{ms / ew_ms:.2f} EW time")
        except Exception as e:  # reported, not hidden
            row("T=40 step", f"per-task gradients, {strategy}", "failed", f"{type(e).__name__}: {e}"[:90])


def part_oom(device: str, tmp: Path) -> None:
    if not device.startswith("cuda"):
        row("OOM", "CUDA out of memory recorded as a failed cell", "skipped", "needs CUDA")
        return
    cap = "import torch; torch.cuda.set_per_process_memory_fraction(0.0001); "  # ~14 MB of an H200
    cli(["run", "--suite", "default", "--device", device, "--no-progress", "--only", "backbone=resnet18-w16",
         "--only", "seed=0", "--only", "method=ew", "--results", str(tmp / "oom")], prefix=cap)
    results = [json.loads(p.read_text()) for p in (tmp / "oom").rglob("*.json")]
    reason = results[0].get("reason", "") if results else ""
    row("OOM", "CUDA out of memory recorded as a failed cell", bool(results) and results[0]["status"] == "failed"
        and "out of memory" in reason.lower(), reason[:80])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a two-method slice: checks the script itself")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: suite, dense, t40, oom")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"GPU check on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        if "suite" not in skip:
            part_determinism_and_packing(args.device, args.smoke, Path(tmp))
        if "dense" not in skip:
            part_dense(device, args.smoke)
        if "t40" not in skip:
            part_t40(device, args.smoke)
        if "oom" not in skip:
            part_oom(args.device, Path(tmp))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check" if not args.smoke else "gpu_check_smoke"
    (out / f"{stem}.json").write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": ROWS}, indent=1, default=str))
    lines = [f"# GPU check: {name} (torch {torch.__version__})", "", "| part | what | value | note |", "|---|---|---|---|"]
    for r in ROWS:
        value = f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"])
        lines.append(f"| {r['part']} | {r['what']} | {value} | {r['note']} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
