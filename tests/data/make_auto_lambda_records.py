"""Record what Auto-Lambda's reference code does over a few training steps
(tests/data/auto_lambda_outputs.json; see tests/data/README.md).

Usage: PYTHONPATH=AUTO_LAMBDA_CHECKOUT python tests/data/make_auto_lambda_records.py > tests/data/auto_lambda_outputs.json

The reference's ``AutoLambda`` (lorenmt/auto-lambda, auto_lambda.py) driven as its
``trainer_dense.py`` drives it: each step ``meta_optimizer.zero_grad()``,
``unrolled_backward(train, val, lr, optimizer)``, ``meta_optimizer.step()`` (Adam on lambda),
then the model's update on sum_i lambda_i L_i. Its ``model_fit`` (the task losses, which reads
the checkout's dense-prediction losses) is replaced by the mean squared error of each task's
scalar output. The model: a trunk Linear(6, width) - BatchNorm1d - ReLU - Linear(width, width) -
ReLU (no bias before the batch norm: its gradient would be rounding noise, which Adam turns into
steps of its full size) and one Linear(width, 1) head per task, initialised by torch.manual_seed(seed); batches of
8 inputs from NumPy's default_rng(seed), targets a fixed random function of the inputs plus
noise. Cases: T = 2, 3, 5 tasks; width 16, and 2 (five tasks on a 2-dimensional
representation: the heads' features are rank-deficient); the reference trainer's optimiser
(SGD 0.1, momentum 0.9, weight decay 1e-4) and Adam 1e-3; lambda's learning rate 1e-4 (the
paper's) and 1e-2; 4 steps. Recorded per case: the initial state, every step's batches, the
meta-gradient of lambda (its ``.grad`` before the meta step), lambda after every step, the final
parameters and batch-norm running statistics.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auto_lambda import AutoLambda  # the reference checkout's module


class Net(nn.Module):
    def __init__(self, n_tasks: int, width: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(n_tasks))

    def forward(self, x):
        z = self.trunk(x)
        return [h(z).squeeze(-1) for h in self.heads]


class Reference(AutoLambda):
    def model_fit(self, pred, targets):
        return [F.mse_loss(pred[i], targets[t]) for i, t in enumerate(self.train_tasks)]


def batch(rng, n_tasks, mix):
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = np.tanh(x @ mix) + 0.1 * rng.standard_normal((8, n_tasks)).astype(np.float32)
    return x, y.astype(np.float32)


def case(n_tasks: int, width: int, optim: str, seed: int, meta_lr: float, steps: int = 4) -> dict:
    torch.manual_seed(seed)
    model = Net(n_tasks, width)
    initial = {k: v.tolist() for k, v in model.state_dict().items()}
    tasks = {f"t{i}": 1 for i in range(n_tasks)}
    autol = Reference(model, "cpu", tasks, tasks, 0.1)
    meta_optimizer = torch.optim.Adam([autol.meta_weights], lr=meta_lr)
    if optim == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((6, n_tasks)).astype(np.float32)
    record: dict = {"T": n_tasks, "width": width, "optimizer": optim, "seed": seed, "meta_lr": meta_lr, "initial": initial, "steps": []}
    model.train()
    for _ in range(steps):
        (tx, ty), (vx, vy) = batch(rng, n_tasks, mix), batch(rng, n_tasks, mix)
        train_x, val_x = torch.from_numpy(tx), torch.from_numpy(vx)
        train_y = {t: torch.from_numpy(ty[:, i].copy()) for i, t in enumerate(tasks)}
        val_y = {t: torch.from_numpy(vy[:, i].copy()) for i, t in enumerate(tasks)}
        meta_optimizer.zero_grad()
        autol.unrolled_backward(train_x, train_y, val_x, val_y, optimizer.param_groups[0]["lr"], optimizer)
        meta_grad = autol.meta_weights.grad.tolist()
        meta_optimizer.step()
        optimizer.zero_grad()
        pred = model(train_x)
        losses = autol.model_fit(pred, train_y)
        loss = sum(w * losses[i] for i, w in enumerate(autol.meta_weights))
        loss.backward()
        optimizer.step()
        record["steps"].append({
            "train": [tx.tolist(), ty.tolist()], "meta": [vx.tolist(), vy.tolist()],
            "meta_grad": meta_grad, "lambda": autol.meta_weights.detach().tolist(),
            "losses": [float(v.detach()) for v in losses],
        })
    record["final"] = {k: v.tolist() for k, v in model.state_dict().items()}
    return record


def main() -> None:
    records = []
    for seed, (n_tasks, width) in enumerate([(2, 16), (3, 16), (5, 16), (5, 2)]):
        for optim in ("sgd", "adam"):
            for meta_lr in (1e-4, 1e-2):  # the paper's, and one at which lambda moves visibly in 4 steps
                records.append(case(n_tasks, width, optim, seed, meta_lr))
    print(json.dumps({"reference": "lorenmt/auto-lambda@bdba636", "torch": torch.__version__, "records": records}))


if __name__ == "__main__":
    main()
