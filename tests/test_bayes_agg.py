"""BayesAgg-MTL against records of its reference code (tests/data/bayes_agg_outputs.json, made
by tests/data/make_bayes_agg_records.py from ssi-research/BayesAgg_MTL's ``BayesAggMTL`` driven
as its trainers drive it): over a warm-up epoch and two epochs with full-data posteriors, T = 2
tasks on 4 features and T = 3 tasks on 2 features, the representation's gradient and the heads'
gradients at every step and the parameters at the end, with the reference's Monte-Carlo draws
replayed. Then the clear errors: heads that are not one linear layer, a task without declared
likelihoods, bad options."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import HardSharingModel, StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.plugin.method import build_method
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.strategies import ConflictProbe, LastLayerGradients, StepContext, StepInputs, strategy_for
from tests.conftest import REPO
from tests.data.make_bayes_agg_records import Net, batches, task_names

RECORDS = json.loads((REPO / "tests" / "data" / "bayes_agg_outputs.json").read_text())["cases"]
METHODS = discover(REPO).methods


def within(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """max |a - b| <= tol max |b| (relative to the tensor's size, not entry by entry)."""
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-12)


def setup(case: dict, heads: dict[str, nn.Module] | None = None):
    net = Net(case["T"], case["C"], case["D"])
    net.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in case["initial"].items()})
    model = HardSharingModel(net.trunk, heads or dict(net.heads.items()))
    names = task_names(case["T"])
    shared = list(model.trunk.parameters())
    recorder = ConflictRecorder(names, ["trunk"], [sum(p.numel() for p in shared)], every=0)
    ctx = StepContext(shared, [model.task_parameters(t) for t in names], ("loop", 1), lambda g: g,
                      ConflictProbe(recorder, None, lambda g: g))  # fmt: skip
    return model, names, ctx


def losses_of(names):
    def fn(outputs, y):
        return torch.stack([F.cross_entropy(outputs[t], y[t]) for t in names])

    return fn


@pytest.mark.parametrize("case", RECORDS, ids=lambda c: c["name"])
def test_matches_the_reference_code(case):
    model, names, ctx = setup(case)
    method = build_method(METHODS, "bayes-agg", case["T"], {"gamma": case["gamma"], "sqrt_power": case["sqrt_power"],
                                                             "mc_samples": case["mc"], "warmup_epochs": case["ls_epochs"]})  # fmt: skip
    strategy = strategy_for(method)
    assert isinstance(strategy, LastLayerGradients)
    generators: dict[int, torch.Generator] = {}
    method.noise = lambda shape, info: torch.empty(shape).normal_(generator=generators[info.step])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    captured = {}

    def watch(module, inputs, out):  # the gradient that reaches the trunk's output
        out.register_hook(lambda g: captured.__setitem__("grad", g.clone()))

    model.trunk.register_forward_hook(watch)
    data = batches(case)
    fn = losses_of(names)
    for k, step in enumerate(case["steps"]):
        x, y = data[k % len(data)]
        targets = {t: y[:, i] for i, t in enumerate(names)}
        generators[k] = torch.Generator().manual_seed(step["seed"])
        info = StepInfo(step=k, epoch=step["epoch"], steps_per_epoch=len(data), total_steps=len(case["steps"]))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        losses = fn(strategy.outputs(model, x), targets)
        ctx.inputs = StepInputs(model, optimizer, fn, (x, targets), tasks=names, likelihoods=["categorical"] * len(names))
        strategy.fill_gradients([losses], info, ctx)
        # float32 sums in another order (the Gauss-Newton matrix's Kronecker form, the gradients
        # contracted over the classes in one product, threads) through two Cholesky
        # factorisations: 1e-5 of the largest entry bounds it (5.4e-7 measured)
        assert within(captured["grad"].double(), torch.tensor(step["rep_grad"]), 1e-5), (k, step["epoch"])
        for key, p in model.heads.named_parameters():
            assert within(p.grad.double(), torch.tensor(step["head_grads"][key]), 1e-5), (k, key)
        optimizer.step()
    for key, value in model.state_dict().items():
        assert within(value.double(), torch.tensor(case["final"][key]), 1e-5), key
    assert any(s["epoch"] >= case["ls_epochs"] for s in case["steps"])


def test_clear_errors():
    case = RECORDS[0]
    x, y = batches(case)[0]
    names = task_names(case["T"])
    targets = {t: y[:, i] for i, t in enumerate(names)}
    mlp = {t: nn.Sequential(nn.Linear(case["D"], 5), nn.ReLU(), nn.Linear(5, case["C"])) for t in names}
    for heads, likelihoods, message in (
        (mlp, ["categorical"] * 2, "not one linear layer"),
        (None, [None, "categorical"], "declares no likelihood"),
    ):
        model, _, ctx = setup(case, heads)
        method = build_method(METHODS, "bayes-agg", case["T"])
        strategy = strategy_for(method)
        losses = losses_of(names)(strategy.outputs(model, x), targets)
        ctx.inputs = StepInputs(model, torch.optim.SGD(model.parameters(), lr=0.1), losses_of(names), (x, targets), tasks=names,
                                likelihoods=likelihoods)  # fmt: skip
        with pytest.raises(ValueError, match=message):
            strategy.fill_gradients([losses], StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1), ctx)
    with pytest.raises(ValueError, match="warmup_epochs >= 1"):
        build_method(METHODS, "bayes-agg", 2, {"warmup_epochs": 0})
