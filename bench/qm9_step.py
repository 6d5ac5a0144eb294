"""QM9's cost per training step at T = 11: every method's step time relative to EW and to one
forward + 11 single-task backward passes, on the MPNN with synthetic molecules of QM9's size
(9 to 29 atoms, mean ~18, complete graphs) at the papers' batch of 120.

    OMP_NUM_THREADS=2 python bench/qm9_step.py --rounds 5
    OMP_NUM_THREADS=2 python bench/qm9_step.py --batch-size 32 --rounds 3 --methods ew,mgda,pcgrad,cagrad,nash-mtl,famo
    OMP_NUM_THREADS=2 python bench/qm9_step.py --edge-net --methods ew,mgda,pcgrad --rounds 5

Prints a table and writes bench/results/qm9_step.{csv,md}. Ratios within one run only.
``--edge-net``: the MPNN's step with its edge network applied once per forward (as shipped)
against PyG's ``NNConv`` path (applied in each of the three rounds, as the papers' code does),
interleaved, per method; writes bench/results/qm9_edge_net.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from method_cost import make_step, measure, median_ratio  # noqa: E402

from mtlbench.api import Task  # noqa: E402
from mtlbench.backbones.mpnn import MPNN  # noqa: E402
from mtlbench.datasets.graphs import GraphSplit, offsets  # noqa: E402
from mtlbench.grid.plugins import discover  # noqa: E402
from mtlbench.plugin.method import build_method  # noqa: E402
from mtlbench.plugin.model import HardSharingModel  # noqa: E402

TASKS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u", "h", "g", "cv")
METHODS = ("ew", "si", "rlw", "dwa", "uw", "famo", "mgda", "pcgrad", "cagrad", "imtl-g", "nash-mtl")


class Regression(Task):
    name = "qm9-cost"
    metrics = ()
    tasks = TASKS

    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, 1)

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output.reshape(-1), target)


def molecules(n: int, seed: int = 0) -> GraphSplit:
    rng = np.random.default_rng(seed)
    atoms = rng.integers(9, 30, n)
    x = torch.from_numpy(rng.random((int(atoms.sum()), 11), dtype=np.float32))
    pos = torch.from_numpy(rng.normal(size=(int(atoms.sum()), 3)).astype(np.float32))
    bonds, counts = [], []
    for a in atoms:
        chain = np.arange(a - 1)
        pairs = np.concatenate([np.stack([chain, chain + 1], 1), np.stack([chain + 1, chain], 1)])
        bonds.append(pairs)
        counts.append(len(pairs))
    bond = torch.from_numpy(np.concatenate(bonds))
    attr = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(0, 4, len(bond))), 4).float()
    y = {t: torch.randn(n) for t in TASKS}
    return GraphSplit(x, pos, offsets(atoms), bond, attr, offsets(np.array(counts)), y)


class EveryRoundMPNN(MPNN):
    """The papers' cost: PyG's NNConv applies the edge network in every round."""

    def forward(self, g):  # type: ignore[no-untyped-def]
        out = torch.relu(self.lin0(g.x))
        h = out.unsqueeze(0)
        for _ in range(3):
            m = torch.relu(self.conv(out, g.edge_index, self.conv.edge_weights(g.edge_attr)))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        return torch.relu(self.lin1(self.set2set(out, g.batch, dim_size=g.num_graphs)))


def edge_net(args: argparse.Namespace, batch: tuple, device: torch.device) -> int:
    methods = discover(ROOT).methods
    task = Regression()
    strategy = ("loop", 1) if device.type == "cpu" else ("batched", 8)
    models = {}
    for label, cls in (("once", MPNN), ("every_round", EveryRoundMPNN)):
        torch.manual_seed(0)
        models[label] = HardSharingModel(cls(11, args.dim), {t: nn.Linear(args.dim, 1) for t in TASKS}).to(device).train()
    lines = []
    print("method | every round ms | once ms | once / every round")
    for name in args.methods.split(","):
        steps = {label: make_step(m, task, build_method(methods, name, 11).to(device), strategy, batch)
                 for label, m in models.items()}  # fmt: skip
        stats, times = measure(steps, device, args.warmup, args.rounds)
        ratio = median_ratio(times["once"], times["every_round"])
        line = f"| {name} | {1000 * stats['every_round'][0]:.1f} | {1000 * stats['once'][0]:.1f} | {ratio:.2f} |"
        lines.append(line)
        print(line, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = (f"# QM9 MPNN step: edge network once per forward vs every round ({args.device}, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, "
            f"batch {args.batch_size}, median of {args.rounds} interleaved rounds)\n\n"
            "| method | every round (PyG NNConv) ms | once ms | once / every round |\n|---|---|---|---|\n")
    (out / "qm9_edge_net.md").write_text(head + "\n".join(lines) + "\n")
    print(f"wrote {out / 'qm9_edge_net.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (EW is always measured)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--edge-net", action="store_true", help="edge network once per forward vs every round (see above)")
    p.add_argument("--data", help="take the batch from the prepared real QM9 store in this folder (default: synthetic molecules)")
    p.add_argument("--graph", choices=["complete", "bonds"], default="complete", help="with --data: the qm9 task's graph option")
    p.add_argument("--dim", type=int, default=64, help="the MPNN's width (the papers': 64)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    methods = discover(ROOT).methods
    task = Regression()
    if args.data:
        source = discover(ROOT).tasks["qm9"](graph=args.graph).load(Path(args.data))["train"]
    else:
        source = molecules(args.batch_size)
    g, y = source.batch(torch.arange(args.batch_size))
    batch = (g.to(device), {k: v.to(device) for k, v in y.items()})
    if args.edge_net:
        return edge_net(args, batch, device)
    torch.manual_seed(0)
    trunk = MPNN(11, args.dim)
    model = HardSharingModel(trunk, {t: nn.Linear(args.dim, 1) for t in TASKS}).to(device).train()
    strategy = ("loop", 1) if device.type == "cpu" else ("batched", 8)
    ew = make_step(model, task, build_method(methods, "ew", 11).to(device), strategy, batch)
    ref = make_step(model, task, None, strategy, batch, reference=True)
    rows = []
    print("method | step_ms | x_ew | x_fwd_11_bwd")
    for name in ["ew"] + [m for m in args.methods.split(",") if m != "ew"]:
        stats, times = measure({"ew": ew, "ref": ref, "m": make_step(model, task, build_method(methods, name, 11).to(device), strategy,
                                                                       batch)}, device, args.warmup, args.rounds)
        row = {"method": name, "kind": methods[name].kind, "step_ms": 1000 * stats["m"][0],
               "x_ew": median_ratio(times["m"], times["ew"]), "x_fwd_11_bwd": median_ratio(times["m"], times["ref"]),
               "ew_ms": 1000 * stats["ew"][0], "fwd_11_bwd_ms": 1000 * stats["ref"][0]}
        rows.append(row)
        print(f"{name} | {row['step_ms']:.1f} | {row['x_ew']:.2f} | {row['x_fwd_11_bwd']:.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "qm9_step.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    data = f"real QM9, {args.graph} graphs" if args.data else "synthetic molecules, complete graphs"
    head = (f"# QM9 step cost, T = 11 ({args.device}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, batch {args.batch_size}, MPNN dim {args.dim}, {data}, "
            f"median of {args.rounds} interleaved rounds)\n\n"
            "| method | kind | step ms | x EW | x (fwd + 11 bwd) |\n|---|---|---|---|---|\n")
    body = "".join(f"| {r['method']} | {r['kind']} | {r['step_ms']:.1f} | {r['x_ew']:.2f} | {r['x_fwd_11_bwd']:.2f} |\n" for r in rows)
    (out / "qm9_step.md").write_text(head + body + f"\nEW {rows[0]['ew_ms']:.1f} ms; forward + 11 backward {rows[0]['fwd_11_bwd_ms']:.1f} ms.\n")
    print(f"wrote {out / 'qm9_step.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
