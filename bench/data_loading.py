"""Batch loading from a memory-mapped store, against the alternatives. Prints a table.

Builds a CelebA-shaped HuggingFace ``datasets`` store (uint8 3x64x64 images, 40 int8 attributes;
``--rows`` rows, 20,000 by default, ~250 MB) in a temporary folder and times gathering shuffled
batches of ``--batch`` rows, normalised to float32, three ways:

- ``MappedSplit`` over zero-copy views of the memory-mapped Arrow file (what the tasks use);
- one in-memory uint8 tensor (the whole column copied into RAM first; fastest, but a full
  CelebA store is 2.4 GB of RAM per process);
- the rows one by one through ``Dataset.__getitem__`` (the per-row Python loop the tasks avoid).

Run: ``OMP_NUM_THREADS=1 python bench/data_loading.py``. Timings are wall-clock medians and
depend on the machine's load; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    import datasets
    from mtlbench.datasets.images import IMAGENET_MEAN, IMAGENET_STD, Normalize
    from mtlbench.datasets.splits import MappedColumn, MappedSplit, arrow_columns

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Array3D((3, 64, 64), "uint8"),
                                  "attributes": datasets.Sequence(datasets.Value("int8"), length=40)})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = datasets.Dataset.from_dict({"image": rng.integers(0, 256, (args.rows, 3, 64, 64), dtype=np.uint8),
                                         "attributes": rng.integers(0, 2, (args.rows, 40), dtype=np.int8)}, features=features)
        ds.save_to_disk(str(Path(tmp) / "store"))
        build_s = time.perf_counter() - t0
        del ds
        ds = datasets.load_from_disk(str(Path(tmp) / "store"))
        normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        t0 = time.perf_counter()
        image = arrow_columns(ds, ["image"], "bench")["image"]
        attrs = np.asarray(ds.with_format("numpy", columns=["attributes"])[:]["attributes"], dtype=np.int64)
        mapped = MappedSplit(image, {f"a{k}": MappedColumn([np.ascontiguousarray(attrs[:, k])]) for k in range(40)},
                             transform=normalize)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        in_memory = torch.from_numpy(np.ascontiguousarray(ds.with_format("numpy", columns=["image"])[:]["image"]))
        copy_s = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(0)

        def index() -> torch.Tensor:
            return torch.randperm(args.rows, generator=gen)[:args.batch]

        rows = [
            ("MappedSplit (memory-mapped)", median_ms(lambda: mapped.batch(index()), args.repeats), open_s, len(image.chunks)),
            ("in-memory uint8 tensor", median_ms(lambda: normalize(in_memory[index()]), args.repeats), copy_s, 1),
            ("Dataset[i] per row", median_ms(lambda: normalize(torch.stack(
                [torch.as_tensor(np.asarray(ds.with_format("numpy")[int(i)]["image"])) for i in index()])), max(3, args.repeats // 10)),
             0.0, len(image.chunks)),
        ]
    print(f"store: {args.rows} rows of 3x64x64 uint8 + 40 attributes, written in {build_s:.1f} s; batch {args.batch}, shuffled")
    print(f"{'loader':<30} {'ms / batch':>11} {'x mapped':>9} {'setup s':>8} {'chunks':>7}")
    base = rows[0][1]
    for name, ms, setup, chunks in rows:
        print(f"{name:<30} {ms:>11.2f} {ms / base:>9.2f} {setup:>8.2f} {chunks:>7}")


if __name__ == "__main__":
    main()
