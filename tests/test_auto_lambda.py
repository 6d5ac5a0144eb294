"""Auto-Lambda against records of its reference code (tests/data/auto_lambda_outputs.json, made
by tests/data/make_auto_lambda_records.py from lorenmt/auto-lambda): the meta-gradient of lambda
each step, lambda after each step and the model's parameters after four steps, with SGD with
momentum and weight decay (the reference trainer's) and with Adam, T = 2, 3, 5 and a rank-deficient
representation, batch-norm running statistics included."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.strategies import ConflictProbe, LookAhead, StepInputs, StepContext, forward, strategy_for
from tests.conftest import REPO

RECORDS = json.loads((REPO / "tests" / "data" / "auto_lambda_outputs.json").read_text())["records"]
AUTO_LAMBDA = discover(REPO).methods["auto-lambda"]


class Net(nn.Module):
    """The records' model (make_auto_lambda_records.Net), with named task outputs."""

    def __init__(self, n_tasks: int, width: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(n_tasks))

    def forward(self, x):
        z = self.trunk(x)
        return {f"t{i}": h(z).squeeze(-1) for i, h in enumerate(self.heads)}


def within(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """max |a - b| <= tol max |b| (relative to the tensor's size, not entry by entry)."""
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-12)


def replay(record: dict) -> tuple[Net, list[torch.Tensor], list[torch.Tensor]]:
    """Our strategy and method over the record's batches: (model, meta-gradients, lambdas)."""
    t = record["T"]
    tasks = [f"t{i}" for i in range(t)]
    model = Net(t, record["width"])
    model.load_state_dict({k: torch.tensor(v) for k, v in record["initial"].items()})
    model.train()
    method = AUTO_LAMBDA(n_tasks=t, init=0.1, lr=record["meta_lr"])
    if record["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    strategy = strategy_for(method)
    assert isinstance(strategy, LookAhead)
    shared = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    recorder = ConflictRecorder(tasks, ["trunk"], [sum(p.numel() for p in shared)], every=0)
    ctx = StepContext(shared, heads, ("loop", 1), lambda g: g, ConflictProbe(recorder, None, lambda g: g))
    grads, lambdas = [], []
    meta_step = method.meta_step

    def capture(grad, info):
        grads.append(grad.clone())
        meta_step(grad, info)

    method.meta_step = capture  # type: ignore[method-assign]

    def losses_of(outputs, y):
        return torch.stack([F.mse_loss(outputs[k], y[k]) for k in tasks])

    for k, step in enumerate(record["steps"]):
        (tx, ty), (mx, my) = step["train"], step["meta"]
        train = (torch.tensor(tx), {f"t{i}": torch.tensor(ty)[:, i].contiguous() for i in range(t)})
        meta = (torch.tensor(mx), {f"t{i}": torch.tensor(my)[:, i].contiguous() for i in range(t)})
        info = StepInfo(step=k, epoch=0, steps_per_epoch=4, total_steps=4, generator=torch.Generator().manual_seed(0),
                        layer_sizes=(1,))
        losses = losses_of(forward(model, train[0]), train[1])
        ctx.inputs = StepInputs(model, optimizer, losses_of, train, meta)
        optimizer.zero_grad(set_to_none=True)
        ctx.probe.begin(k, losses)
        strategy.fill_gradients([losses], info, ctx)
        optimizer.step()
        lambdas.append(method.lam.clone())
    return model, grads, lambdas


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"T{r['T']}-w{r['width']}-{r['optimizer']}-meta{r['meta_lr']}")
def test_matches_the_reference_code(record):
    model, grads, lambdas = replay(record)
    for k, step in enumerate(record["steps"]):
        ref_grad, ref_lam = torch.tensor(step["meta_grad"]), torch.tensor(step["lambda"])
        # the same float32 operations: on one thread, as the records were made, equal to 1.2e-7;
        # on more threads float32 sums run in another order and the finite difference (losses at
        # theta +- eps d, eps ~ 0.01 / ||d||) turns that into up to ~3e-5 of the meta-gradient
        assert within(grads[k], ref_grad, 2e-4), (k, grads[k], ref_grad)
        assert within(lambdas[k], ref_lam, 2e-5), (k, lambdas[k], ref_lam)
    final = model.state_dict()
    for name, ref in record["final"].items():
        ref = torch.tensor(ref)
        assert within(final[name].double(), ref.double(), 2e-4), name


def test_batch_norm_statistics_follow_the_reference():
    """Four training-mode forwards of the training batch a step, as the reference."""
    for record in RECORDS:
        model, _, _ = replay(record)
        final = model.state_dict()
        for name in ("trunk.1.running_mean", "trunk.1.running_var", "trunk.1.num_batches_tracked"):
            assert within(final[name].double(), torch.tensor(record["final"][name]).double(), 2e-4), name


def test_flat_meta_loss_gives_no_meta_step():
    """A meta batch whose loss does not depend on the parameters (zero direction): the
    meta-gradient is zero instead of the reference's division by a zero norm."""
    model = Net(2, 4)
    for p in model.parameters():
        nn.init.zeros_(p)
    method = AUTO_LAMBDA(n_tasks=2)
    strategy = strategy_for(method)
    x = torch.randn(8, 6)
    y = {"t0": torch.zeros(8), "t1": torch.zeros(8)}

    def losses_of(outputs, yy):
        return torch.stack([F.mse_loss(outputs[k], yy[k]) for k in ("t0", "t1")])

    losses = losses_of(forward(model, x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    info = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator(), layer_sizes=(1,))
    grad = strategy.meta_gradient(losses, info, StepInputs(model, opt, losses_of, (x, y), (x, y)))
    assert torch.equal(grad, torch.zeros(2))
