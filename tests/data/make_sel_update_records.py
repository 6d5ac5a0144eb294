"""Record what Selective Task Group Updates' reference code does over a few training steps
(tests/data/sel_update_outputs.json; see tests/data/README.md).

Usage: PYTHONPATH=SEL_UPDATE_CHECKOUT/sel-update-mtl python tests/data/make_sel_update_records.py > tests/data/sel_update_outputs.json

The reference's own training loop, ``train_phase_affinity`` (wooseong97/sel-update-mtl,
``utils/train_utils.py``), with its ``form_task_affinity`` and its ``MTLoss_affinity``
criterion, run for one pass over a small sequential data set: ``to_cuda`` is the identity (CPU),
the scheduler records the state after each step, evaluation never comes due, NumPy's global
generator (the clustering's tie-breaking noise: scikit-learn's default ``random_state``) is
seeded before each re-grouping with a recorded seed, and the modules
its imports need but these steps do not use (imageio, scikit-image, torch._six) are stubs. The model: a trunk
Linear(5, 8) - Tanh - Linear(8, 8) - Tanh and one head per task (regression tasks: Linear(8, 1)
with the mean squared error; the last task: 3 classes with the cross-entropy). Cases: T = 4 with
SGD (lr 0.05, momentum 0.9), decay 0.3, the groups re-formed from the eighth step on
(``prepos`` 6: earlier, a task whose loss never fell after another group's update still has a
zero diagonal entry, and the reference's normalisation divides by it), 16 steps; T = 3 with
Adam (lr 0.01), decay 0.05, ``prepos`` 6, 16 steps. Recorded: the initial
state, per step the groups in the order they were updated and the clustering's seed, and after the step the affinity map,
the groups and the parameters. The model and data are importable without the reference
(tests/test_sel_update.py uses them).
"""

from __future__ import annotations

import json
import random
import sys
import types

import numpy as np
import torch
from torch import nn

CASES = [
    dict(name="T4-sgd", T=4, optimizer="sgd", decay=0.3, prepos=6, steps=16, batch=6, seed=0),
    dict(name="T3-adam", T=3, optimizer="adam", decay=0.05, prepos=6, steps=16, batch=6, seed=1),
]


def task_names(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


class Net(nn.Module):
    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 3 if i == n_tasks - 1 else 1) for i, t in enumerate(task_names(n_tasks))})

    def forward(self, x):
        z = self.trunk(x)
        return {t: h(z) for t, h in self.heads.items()}


def loss_fn(n_tasks: int, i: int):
    return nn.CrossEntropyLoss() if i == n_tasks - 1 else nn.MSELoss()


def data(case: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(case["seed"])
    n, t = case["batch"] * case["steps"], case["T"]
    x = torch.randn(n, 5, generator=g)
    out = {"image": x}
    mix = torch.randn(5, t, generator=g)
    for i, name in enumerate(task_names(t)):
        if i == t - 1:
            out[name] = torch.randint(0, 3, (n,), generator=g)
        else:
            out[name] = (torch.sin(x @ mix[:, i : i + 1]) + 0.1 * torch.randn(n, 1, generator=g)).float()
    return out


def optimizer_for(case: dict, params) -> torch.optim.Optimizer:
    if case["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01)


def _tolist(t: torch.Tensor) -> list:
    return t.detach().double().tolist()


class Attr(dict):
    __getattr__ = dict.__getitem__


def _stubs() -> None:
    for name in ("imageio", "skimage", "skimage.io"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    six = types.ModuleType("torch._six")
    six.inf = float("inf")  # type: ignore[attr-defined]
    sys.modules.setdefault("torch._six", six)


def record(case: dict) -> dict:
    import utils.train_utils as train_utils
    from losses.loss_schemes import MTLoss_affinity

    names = task_names(case["T"])
    random.seed(case["seed"])
    torch.manual_seed(case["seed"])
    model = Net(case["T"])
    initial = {k: _tolist(v) for k, v in model.state_dict().items()}
    p = Attr(
        TASKS=Attr(NAMES=names), group={f"group{i + 1}": [t] for i, t in enumerate(names)}, affin_decay=case["decay"],
        preference="None", prepos=case["prepos"], max_iter=10**9, val_interval=10**9, train_db_name="NYUD",
        loss_schema="affinity",
    )  # fmt: skip
    affinity = train_utils.form_task_affinity(p)
    affinity.init_pre_loss()
    criterion = MTLoss_affinity(
        p, names, nn.ModuleDict({t: loss_fn(case["T"], i) for i, t in enumerate(names)}), {t: 1.0 for t in names}
    )
    criterion.group = affinity.group
    optimizer = optimizer_for(case, model.parameters())
    steps: list[dict] = []
    order: list[list[str]] = []
    update, next_group = affinity.update, affinity.next_group
    seed: dict[str, int] = {}

    def on_next_group():  # the clustering's noise: NumPy's global generator, seeded per call and recorded
        seed["step"] = 1000 * case["seed"] + len(steps)
        np.random.seed(seed["step"])
        return next_group()

    def on_update(group, loss_dict):
        order.append(list(affinity.group[group]))
        update(group, loss_dict)

    affinity.update, affinity.next_group = on_update, on_next_group

    class Scheduler:
        def step(self):
            steps.append({
                "order": [[names.index(t) for t in g] for g in order],
                "cluster_seed": seed.pop("step", None),
                "affinity": _tolist(affinity.affinity_map),
                "groups": [[names.index(t) for t in g] for g in affinity.group.values()],
                "state": {k: _tolist(v) for k, v in model.state_dict().items()},
            })  # fmt: skip
            order.clear()

    d = data(case)
    rows = [{k: v[i] for k, v in d.items()} for i in range(len(d["image"]))]
    loader = torch.utils.data.DataLoader(rows, batch_size=case["batch"], shuffle=False)
    train_utils.to_cuda = lambda batch: batch
    args = types.SimpleNamespace(local_rank=0)
    train_utils.train_phase_affinity(p, args, loader, None, model, criterion, optimizer, Scheduler(), 0, None, None, 0, affinity)
    return {**case, "initial": initial, "steps": steps}


def main() -> None:
    _stubs()
    torch.set_num_threads(1)
    print(
        json.dumps(
            {"reference": "wooseong97/sel-update-mtl@53a8ba2", "torch": torch.__version__, "cases": [record(c) for c in CASES]}
        )
    )


if __name__ == "__main__":
    main()
