"""Record what BayesAgg-MTL's reference code does over a few training steps
(tests/data/bayes_agg_outputs.json; see tests/data/README.md).

Usage: PYTHONPATH=BAYESAGG_CHECKOUT python tests/data/make_bayes_agg_records.py > tests/data/bayes_agg_outputs.json

The reference's ``BayesAggMTL`` (ssi-research/BayesAgg_MTL, ``BayesAgg_MTL/BayesAggMTL.py``)
driven as its trainers drive it (``experiments/utkface/trainer.py``): the first ``ls_epochs``
epochs train on the sum of the losses; afterwards every step calls ``method.backward(losses,
last_layer_params, representation, labels, full_train_features, full_train_labels)``, with the
previous epoch's representations and labels (collected online, as the trainers collect them) at
an epoch's first step; then Adam (lr 1e-2). The model: a trunk Linear(5, D) - Tanh and one
Linear(D, C) head per task (``multiclass`` task groups, cross-entropy). Before every step torch's
generator is seeded with a recorded seed (the Monte-Carlo samples come from it). Cases: T = 2
tasks of 3 classes on D = 4 (gamma 0.005, sqrt_power 0.1: the reference's UTKFace settings) and
T = 3 tasks of 4 classes on D = 2 (fewer features than tasks; gamma 1, sqrt_power 0.5); one
warm-up epoch, then two epochs; 3 batches of 8 an epoch; 64 samples. Recorded: the initial
state, the batches, per step the seed, the representation's gradient and the heads' gradients,
and the final state. The model and data are importable without the reference
(tests/test_bayes_agg.py uses them).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

CASES = [
    dict(name="T2-C3-D4", T=2, C=3, D=4, gamma=0.005, sqrt_power=0.1, mc=64, ls_epochs=1, epochs=3, batches=3, batch=8, seed=0),
    dict(name="T3-C4-D2", T=3, C=4, D=2, gamma=1.0, sqrt_power=0.5, mc=64, ls_epochs=1, epochs=3, batches=3, batch=8, seed=1),
]


def task_names(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


class Net(nn.Module):
    """Keys as mtlbench's HardSharingModel's (trunk.*, heads.<task>.*)."""

    def __init__(self, n_tasks: int, classes: int, dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, dim), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(dim, classes) for t in task_names(n_tasks)})

    def forward(self, x):
        h = self.trunk(x)
        return [head(h) for head in self.heads.values()], h


def batches(case: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each epoch sees the same ``batches`` batches: inputs (B, 5) and labels (B, T)."""
    g = torch.Generator().manual_seed(case["seed"])
    n = case["batch"] * case["batches"]
    x = torch.randn(n, 5, generator=g)
    mix = torch.randn(5, case["T"] * case["C"], generator=g)
    logits = (x @ mix).view(n, case["T"], case["C"]) + 0.5 * torch.randn(n, case["T"], case["C"], generator=g)
    y = logits.argmax(-1)
    b = case["batch"]
    return [(x[i : i + b], y[i : i + b]) for i in range(0, n, b)]


def _tolist(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


def record(case: dict) -> dict:
    from BayesAgg_MTL import BayesAggMTL

    torch.manual_seed(case["seed"])
    model = Net(case["T"], case["C"], case["D"])
    initial = {k: _tolist(v) for k, v in model.state_dict().items()}
    method = BayesAggMTL(
        num_tasks=case["T"], n_outputs_per_task_group=[case["C"]] * case["T"], task_types=["multiclass"] * case["T"],
        cls_hps={"gamma": case["gamma"], "sqrt_power": case["sqrt_power"], "num_mc_samples": case["mc"]},
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = batches(case)
    steps, seed = [], 100 * case["seed"]
    train_features = train_labels = None
    for epoch in range(case["epochs"]):
        for j, (x, y) in enumerate(data):
            model.train()
            optimizer.zero_grad()
            logits, features = model(x)
            losses = torch.stack([F.cross_entropy(out, y[:, i]) for i, out in enumerate(logits)])
            captured = {}
            features.register_hook(lambda g: captured.setdefault("grad", g.detach().clone()))
            seed += 1
            torch.manual_seed(seed)
            if epoch < case["ls_epochs"]:
                losses.sum().backward()
            else:
                method.backward(
                    losses=losses, last_layer_params=[p for h in model.heads.values() for p in h.parameters()],
                    representation=features, labels=[y[:, i] for i in range(case["T"])],
                    full_train_features=train_features if j == 0 else None,
                    full_train_labels=[train_labels[:, i] for i in range(case["T"])] if j == 0 else None,
                )  # fmt: skip
            steps.append({
                "epoch": epoch, "seed": seed, "rep_grad": _tolist(captured["grad"]),
                "head_grads": {k: _tolist(p.grad) for k, p in model.heads.named_parameters()},
            })  # fmt: skip
            optimizer.step()
            online = (
                (features.detach().clone(), y.clone())
                if j == 0
                else (torch.cat((online[0], features.detach())), torch.cat((online[1], y)))
            )
        train_features, train_labels = online
    final = {k: _tolist(v) for k, v in model.state_dict().items()}
    return {**case, "initial": initial, "steps": steps, "final": final}


def main() -> None:
    torch.set_num_threads(1)
    print(
        json.dumps(
            {"reference": "ssi-research/BayesAgg_MTL@c36321d", "torch": torch.__version__, "cases": [record(c) for c in CASES]}
        )
    )


if __name__ == "__main__":
    main()
