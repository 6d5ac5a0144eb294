"""Dense tasks: loading speed of the memory-mapped store and the cost of a SegNet / SegNet-MTAN step.

Writes a synthetic NYUv2-sized source in MTAN's npy layout (random arrays, 288x384), prepares
it with the task's own ``prepare``, then prints two tables:

1. time to gather one batch of training rows: the task's memory-mapped split (``MappedSplit``)
   against the two usual ways of reading an HF ``datasets`` store (batched ``ds[indices]`` with
   NumPy formatting, and one row at a time as a map-style DataLoader would);
2. one training step (forward, per-task losses, backward, Adam) of the paper-size SegNet and
   SegNet-MTAN, with plain summed losses and with per-task gradients (what gradient methods and
   conflict sampling pay), plus peak memory on CUDA.

Usage: python bench/dense.py [--images 32] [--batch 2] [--steps 3] [--device cpu|cuda] [--crop H W]
(``--crop`` runs the step table on the top-left HxW of the images: the paper-size step needs
several GB of memory on a CPU.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data_loading import median_ms  # noqa: E402
from mtlbench.backbones.build import BackboneSpec  # noqa: E402
from mtlbench.grid.plugins import discover  # noqa: E402
from mtlbench.train.cell import build_model  # noqa: E402
from mtlbench.train.gradients import task_gradients  # noqa: E402


def write_source(root: Path, n_train: int, n_val: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    h, w = size
    for folder, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            arrays = {"image": rng.random((h, w, 3), dtype=np.float32),
                      "label": rng.integers(-1, 13, (h, w)).astype(np.float32),
                      "depth": rng.random((h, w, 1), dtype=np.float32) + 0.1,
                      "normal": rng.random((h, w, 3), dtype=np.float32)}
            for name, a in arrays.items():
                (root / folder / name).mkdir(parents=True, exist_ok=True)
                np.save(root / folder / name / f"{i}.npy", a)
    return root


def loading_table(task, data_dir: Path, batch: int, repeat: int) -> None:
    import datasets

    split = task.load(data_dir)["train"]
    hf = datasets.load_from_disk(str(task.store_path(data_dir)))["train"]
    columns = ["image", *task.tasks]
    fmt = hf.with_format("numpy", columns=columns)
    rng = np.random.default_rng(1)
    picks = [rng.permutation(len(split))[:batch] for _ in range(repeat)]
    it = iter(picks * 3)

    def to_torch(arrays: dict) -> dict:
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        out["segmentation"] = out["segmentation"].long()
        return out

    def mapped() -> None:
        split.batch(torch.from_numpy(next(it)))

    def hf_batched() -> None:
        to_torch(fmt[split.rows[next(it)].tolist()])

    def hf_rows() -> None:
        rows = [fmt[r] for r in split.rows[next(it)].tolist()]
        to_torch({k: np.stack([row[k] for row in rows]) for k in columns})

    rows = [("MappedSplit.batch (memory-mapped views)", median_ms(mapped, repeat)),
            ("datasets ds[indices], numpy format", median_ms(hf_batched, repeat)),
            ("datasets ds[i] row by row", median_ms(hf_rows, repeat))]
    print(f"\nOne batch of {batch} random NYUv2-size training rows as torch tensors "
          f"(median of {repeat}; ratio to MappedSplit)")
    print(f"{'reader':<42} {'ms/batch':>10} {'ratio':>7}")
    for name, ms in rows:
        print(f"{name:<42} {ms:>10.2f} {ms / rows[0][1]:>7.1f}", flush=True)


def step_table(task, data_dir: Path, batch: int, steps: int, device: torch.device, crop: tuple[int, int] | None) -> None:
    split = task.load(data_dir)["train"]
    x, y = split.batch(torch.arange(batch))
    if crop:
        x, y = x[..., :crop[0], :crop[1]], {k: v[..., :crop[0], :crop[1]] for k, v in y.items()}
    x, y = x.to(device), {k: v.to(device) for k, v in y.items()}
    print(f"\nOne training step, batch {batch} of 3x{x.shape[-2]}x{x.shape[-1]}, {device} "
          f"(median of {steps} after one warm-up step)")
    print(f"{'backbone':<13} {'update':<18} {'params (M)':>10} {'ms/step':>10} {'peak MB':>9}")
    for model_name in ("segnet", "segnet_mtan"):
        torch.manual_seed(0)
        model = build_model(task, BackboneSpec(model_name, model_name), list(task.tasks)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        shared = model.shared_parameters()
        heads = [model.task_parameters(t) for t in task.tasks]
        for update in ("sum of losses", "per-task grads"):
            def step() -> None:
                opt.zero_grad(set_to_none=True)
                out = model(x)
                losses = [task.loss(t, out[t], y[t]) for t in task.tasks]
                if update == "sum of losses":
                    sum(losses).backward()
                else:
                    grads, _ = task_gradients(losses, shared, heads)
                    del grads
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            step()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = median_ms(step, steps)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            params = sum(p.numel() for p in model.parameters()) / 1e6
            print(f"{model_name:<13} {update:<18} {params:>10.2f} {ms:>10.0f} {peak:>9.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="training images of the synthetic source")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model (0: skip the step table)")
    parser.add_argument("--repeat", type=int, default=30, help="batches timed per reader")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="step table on HxW crops (multiples of 32)")
    args = parser.parse_args()
    task = discover(ROOT).tasks["nyuv2"]()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = write_source(tmp / "src", args.images, 2, (288, 384))
        t0 = time.perf_counter()
        task.prepare(source, tmp / "data")
        mb = sum(p.stat().st_size for p in source.rglob("*.npy")) / 2**20
        print(f"prepare: {mb:.0f} MB of npy in {time.perf_counter() - t0:.1f} s", flush=True)
        loading_table(task, tmp / "data", args.batch, args.repeat)
        if args.steps:
            step_table(task, tmp / "data", args.batch, args.steps, torch.device(args.device), args.crop)


if __name__ == "__main__":
    main()
