"""Trace a Gram-matrix method's weights and update, step by step, in one cell of a suite.

The cell is trained again exactly as the runner trains it (same configuration, seed and data
order; give the thread count its result was made with, as CPU results depend on it), with the
method's ``gram_weights`` wrapped; no result file is written. Every training step adds one CSV row:

- ``loss``: the mean of the task losses the method saw;
- ``w_min``, ``w_max``, ``w_sum``: its weights;
- ``cos_min``, ``cos_median``, ``cos_max``: the cosine between the update d = sum_i w_i g_i and
  each task gradient g_i, exact from the Gram matrix K (g_i . d = (K w)_i);
- ``ew_cos_median``: the same for the plain sum of the gradients (EW's direction), as a yardstick;
- ``update_ratio``: |d| over the largest |g_i|;
- ``eig_ratio``: K's smallest eigenvalue over its largest.

The summary printed after it gives, per epoch, the steps whose update conflicts with every task
(every cosine below 0), the median cosines and the mean loss, and lists the longest updates with
the mean loss of the 50 steps before and after each. ``--compare RESULT.json`` checks that the
re-run reproduced a stored result (its test metrics and per-epoch training losses). docs/qm9.md
(round 5) reads IMTL-G's failure on QM9 from such traces.

Example:

    OMP_NUM_THREADS=1 python scripts/gram_trace.py --suite qm9-cpu --method imtl-g --seed 1 \\
        --data DIR --out imtl-g-seed1.csv --max-steps 312
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlbench.api import GramWeighting  # noqa: E402
from mtlbench.core.errors import ConfigError  # noqa: E402
from mtlbench.train.conflict import gram_cosines  # noqa: E402

COLUMNS = [
    "step", "epoch", "loss", "w_min", "w_max", "w_sum", "cos_min", "cos_median", "cos_max",
    "ew_cos_median", "update_ratio", "eig_ratio",
]  # fmt: skip


class _Enough(Exception):
    """Raised inside the training loop once ``--max-steps`` steps are traced."""


def step_row(gram: torch.Tensor, weights: torch.Tensor, losses: torch.Tensor, step: int, epoch: int) -> dict[str, float]:
    """One trace row from the step's Gram matrix K, the method's weights w and the task losses. The
    cosines come from the Gram matrix of the T task gradients, the update d = sum_i w_i g_i and
    EW's sum (rows I, w, 1 applied to K: g_i . d = (K w)_i)."""
    k = gram.detach().to(torch.float64)
    w = weights.detach().to(torch.float64)
    t = k.shape[0]
    rows = torch.cat([torch.eye(t, dtype=torch.float64), w[None], torch.ones(1, t, dtype=torch.float64)])
    extended = rows @ k @ rows.T
    cos = gram_cosines(extended)
    norms = extended.diagonal().clamp_min(0).sqrt()
    eig = torch.linalg.eigvalsh(k)
    return {
        "step": step,
        "epoch": epoch,
        "loss": float(losses.detach().to(torch.float64).mean()),
        "w_min": float(w.min()),
        "w_max": float(w.max()),
        "w_sum": float(w.sum()),
        "cos_min": float(cos[:t, t].min()),
        "cos_median": float(cos[:t, t].quantile(0.5)),
        "cos_max": float(cos[:t, t].max()),
        "ew_cos_median": float(cos[:t, t + 1].quantile(0.5)),
        "update_ratio": float(norms[t]) / max(float(norms[:t].max()), torch.finfo(torch.float64).tiny),
        "eig_ratio": float(eig[0] / eig[-1]) if float(eig[-1]) > 0 else 0.0,
    }


def summarize(rows: list[dict[str, float]], top: int = 3, window: int = 50) -> str:
    """Per epoch: steps whose update conflicts with every task, median cosines, mean loss; then the
    ``top`` longest updates with the mean loss over ``window`` steps before and after."""
    if not rows:
        return "no steps traced"
    lines = ["epoch | steps | update against every task | median cosine (update) | median cosine (EW) | mean loss"]
    for epoch in sorted({int(r["epoch"]) for r in rows}):
        sel = [r for r in rows if int(r["epoch"]) == epoch]
        against = sum(r["cos_max"] < 0 for r in sel)
        lines.append(
            f"{epoch + 1} | {len(sel)} | {against} ({100 * against / len(sel):.0f}%) | "
            f"{statistics.median(r['cos_median'] for r in sel):.3f} | "
            f"{statistics.median(r['ew_cos_median'] for r in sel):.3f} | {statistics.fmean(r['loss'] for r in sel):.3f}"
        )
    against = sum(r["cos_max"] < 0 for r in rows)
    lines.append(
        f"all | {len(rows)} | {against} ({100 * against / len(rows):.0f}%) | "
        f"{statistics.median(r['cos_median'] for r in rows):.3f} | {statistics.median(r['ew_cos_median'] for r in rows):.3f} | "
        f"{statistics.fmean(r['loss'] for r in rows):.3f}"
    )
    lines.append(f"longest updates (|d| / max |g_i|), mean loss over {window} steps before -> after:")
    losses = [r["loss"] for r in rows]
    for i in sorted(sorted(range(len(rows)), key=lambda j: -rows[j]["update_ratio"])[:top]):
        r = rows[i]
        before = statistics.fmean(losses[max(0, i - window) : i]) if i else float("nan")
        after = statistics.fmean(losses[i + 1 : i + 1 + window]) if i + 1 < len(rows) else float("nan")
        lines.append(
            f"  step {int(r['step'])}: {r['update_ratio']:.1f}x, weights [{r['w_min']:+.3g}, {r['w_max']:+.3g}], "
            f"cosines [{r['cos_min']:+.3f}, {r['cos_max']:+.3f}], loss {before:.2f} -> {after:.2f}"
        )
    return "\n".join(lines)


def compare(result: dict[str, Any], stored_path: Path) -> str:
    """Whether a whole re-run equals the stored result: the training losses of every epoch both
    have, and the test metrics."""
    stored = json.loads(stored_path.read_text())
    ours, theirs = result["curves"].get("joint", []), stored.get("curves", {}).get("joint", [])
    n = min(len(ours), len(theirs))
    same_losses = all(a["train_loss"] == b["train_loss"] for a, b in zip(ours[:n], theirs[:n]))
    same_test = result["metrics"].get("test") == stored.get("metrics", {}).get("test")
    return (
        f"{stored_path}: training losses of epochs 1-{n}: {'equal' if same_losses else 'DIFFERENT'}, "
        f"test metrics: {'equal' if same_test else 'DIFFERENT'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("benchmark.toml"))
    parser.add_argument("--suite", required=True)
    parser.add_argument("--method", required=True, help="the cell's method label (a Gram-matrix method)")
    parser.add_argument("--mitigation", default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", help="needed when the suite has several")
    parser.add_argument("--data", type=Path, help="prepared datasets (default: $MTLBENCH_DATA or ~/.cache/mtlbench)")
    parser.add_argument("--out", type=Path, required=True, help="the CSV trace to write")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the whole cell)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the grid's cells)")
    parser.add_argument("--compare", type=Path, help="a stored result of this cell to check the re-run against")
    args = parser.parse_args(argv)

    from mtlbench.datasets.splits import data_root
    from mtlbench.grid.config import load_benchmark
    from mtlbench.train.cell import train_cell

    filters = {"method": {args.method}, "mitigation": {args.mitigation}, "seed": {str(args.seed)}}
    if args.backbone:
        filters["backbone"] = {args.backbone}
    try:
        bench = load_benchmark(args.config, [], [args.suite])
        cells = bench.cells([args.suite], filters)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    if len(cells) != 1:
        found = ", ".join(f"{c.backbone}/{c.method}/{c.mitigation}/seed{c.seed}" for c in cells) or "none"
        raise SystemExit(
            f"{args.config}: suite {args.suite!r} has {len(cells)} cells for method={args.method}, "
            f"mitigation={args.mitigation}, seed={args.seed} (found: {found}); give --backbone or check the labels"
        )
    cell = cells[0]
    cls = bench.plugins.methods[cell.method_name]
    if not issubclass(cls, GramWeighting):
        gram_methods = sorted(n for n, c in bench.plugins.methods.items() if issubclass(c, GramWeighting))
        raise SystemExit(
            f"{cell.method_name!r} is not a Gram-matrix method (mtlbench.api.GramWeighting): its weights cannot be "
            f"traced here; Gram-matrix methods: {', '.join(gram_methods)}"
        )
    torch.set_num_threads(args.threads)
    rows: list[dict[str, float]] = []
    original = cls.gram_weights

    def traced(self: GramWeighting, gram: torch.Tensor, losses: torch.Tensor, info: Any) -> torch.Tensor:
        weights = original(self, gram, losses, info)
        rows.append(step_row(gram, weights, losses, info.step, info.epoch))
        if args.max_steps and len(rows) >= args.max_steps:
            raise _Enough
        return weights

    result: dict[str, Any] | None = None
    cls.gram_weights = traced  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as cache:
            out = train_cell(
                cell, bench.plugins, data_dir=args.data or data_root(), device=torch.device("cpu"), progress=False,
                cache_dir=Path(cache),
            )  # fmt: skip
            result = json.loads(out.model_dump_json())
    except _Enough:
        pass
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    finally:
        cls.gram_weights = original  # type: ignore[method-assign]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    name = f"{cell.suite}/{cell.task}/{cell.backbone}/{cell.method}/{cell.mitigation}/seed{cell.seed}"
    print(f"{name}: {len(rows)} steps -> {args.out}")
    print(summarize(rows))
    if args.compare is not None and result is not None:
        print(compare(result, args.compare))
    elif args.compare is not None:
        print(f"{args.compare}: not compared (--max-steps stopped the cell before its result)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
