"""Selective Task Group Updates against records of its reference code
(tests/data/sel_update_outputs.json, made by tests/data/make_sel_update_records.py from
wooseong97/sel-update-mtl's own ``train_phase_affinity``): over 16 steps of T = 4 (SGD with
momentum) and T = 3 (Adam) models, the groups re-formed by affinity propagation from step 7 on,
the affinity map, the groups and the parameters after every step, with the reference's order of
the groups replayed. Then the trainer's side: every group's update goes through the trainer's
own step, a single group is updated twice, and what the method does with a map it cannot
normalise."""

from __future__ import annotations

import json

import pytest
import torch

from mtlbench.api import StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.plugin.method import build_method
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.strategies import ConflictProbe, GroupSequential, StepContext, StepInputs, forward, strategy_for
from tests.conftest import REPO
from tests.data.make_sel_update_records import Net, data, loss_fn, optimizer_for, task_names

RECORDS = json.loads((REPO / "tests" / "data" / "sel_update_outputs.json").read_text())["cases"]
METHODS = discover(REPO).methods


def within(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """max |a - b| <= tol max |b| (relative to the tensor's size, not entry by entry)."""
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-12)


def context(model, n_tasks: int) -> StepContext:
    shared = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads.values()]
    recorder = ConflictRecorder(task_names(n_tasks), ["trunk"], [sum(p.numel() for p in shared)], every=0)
    return StepContext(shared, heads, ("loop", 1), lambda g: g, ConflictProbe(recorder, None, lambda g: g))


@pytest.fixture
def one_thread():
    """The records' own thread count: the clustering is discontinuous in its input, so float32
    sums in another order could pick other exemplars in a near-tie."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", RECORDS, ids=lambda c: c["name"])
def test_matches_the_reference_code(case, one_thread):
    n = case["T"]
    names = task_names(n)
    model = Net(n)
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in case["initial"].items()})
    optimizer = optimizer_for(case, model.parameters())
    method = build_method(METHODS, "sel-update", n, {"decay": case["decay"], "warmup_steps": case["prepos"]})
    strategy = strategy_for(method)
    assert isinstance(strategy, GroupSequential)
    ctx = context(model, n)
    d = data({**case, "steps": len(case["steps"])})
    b = case["batch"]
    losses = [loss_fn(n, i) for i in range(n)]

    def losses_of(outputs, y):
        return torch.stack([losses[i](outputs[t], y[t]) for i, t in enumerate(names)])

    expected: list[list[int]] = []

    def replay_order(count, info):  # the reference's order (Python's random) of our groups
        groups = method.groups()
        unique = [g for i, g in enumerate(expected) if g not in expected[:i]]
        assert len(unique) == count, (unique, groups)
        return [groups.index(g) for g in unique]

    method.order = replay_order
    method.clustering_seed = lambda info: case["steps"][info.step]["cluster_seed"]
    regrouped = set()
    for k, step in enumerate(case["steps"]):
        expected[:] = step["order"]
        # fresh tensors, as the reference's collated batches (a slice's offset changes the BLAS path)
        x, y = d["image"][k * b : (k + 1) * b].clone(), {t: d[t][k * b : (k + 1) * b].clone() for t in names}
        info = StepInfo(step=k, epoch=0, steps_per_epoch=len(case["steps"]), total_steps=len(case["steps"]))
        optimizer.zero_grad(set_to_none=True)
        ctx.inputs = StepInputs(model, optimizer, losses_of, (x, y), apply=optimizer.step)
        strategy.fill_gradients([losses_of(forward(model, x), y)], info, ctx)
        optimizer.step()
        assert method.groups() == step["groups"], k
        regrouped.add(tuple(map(tuple, step["groups"])))
        # the same float32 operations in the same order: equal on one thread (the records' own);
        # 1e-5 of the largest entry bounds what another summation order changes
        assert within(method.affinity.double(), torch.tensor(step["affinity"]), 1e-5), k
        for key, value in model.state_dict().items():
            assert within(value.double(), torch.tensor(step["state"][key]), 1e-5), (k, key)
    assert len(regrouped) >= 3  # singletons, then several different groupings


def test_every_group_goes_through_the_trainers_update_and_a_single_group_twice():
    case = RECORDS[0]
    n, names = case["T"], task_names(case["T"])
    model = Net(n)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method(METHODS, "sel-update", n, {"warmup_steps": 0})
    strategy = strategy_for(method)
    ctx = context(model, n)
    d = data({**case, "steps": len(case["steps"])})
    x, y = d["image"][:6], {t: d[t][:6] for t in names}

    def losses_of(outputs, y):
        return torch.stack([loss_fn(n, i)(outputs[t], y[t]) for i, t in enumerate(names)])

    applied: list[list[bool]] = []

    def apply():
        applied.append([all(p.grad is not None for p in h.parameters()) for h in model.heads.values()])
        optimizer.step()

    for groups, updates in (([[0, 1, 2, 3]], 2), ([[0, 2], [1, 3]], 2), ([[0], [1], [2], [3]], 4)):
        method.labels = torch.tensor([next(i for i, g in enumerate(groups) if t in g) for t in range(n)])
        method.regroup = lambda seed: None  # keep these groups
        applied.clear()
        optimizer.zero_grad(set_to_none=True)
        ctx.inputs = StepInputs(model, optimizer, losses_of, (x, y), apply=apply)
        info = StepInfo(step=1, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(0))
        strategy.fill_gradients([losses_of(forward(model, x), y)], info, ctx)
        assert len(applied) == updates - 1  # the last group's gradient is left for the trainer's step
        last = [all(p.grad is not None for p in h.parameters()) for h in model.heads.values()]
        for heads_with_grad in applied + [last]:  # only the updated group's heads have gradients
            assert sum(heads_with_grad) in {len(g) for g in groups}


def test_an_affinity_map_it_cannot_normalise_keeps_the_groups():
    method = build_method(METHODS, "sel-update", 3)
    method.affinity[0, 1] = 0.2  # diagonal still zero: the normalisation divides by zero
    method.regroup(0)
    assert method.groups() == [[0], [1], [2]]
    method.affinity.copy_(torch.tensor([[1.0, 0.9, -0.5], [0.9, 1.0, -0.5], [-0.5, -0.5, 1.0]]))
    method.regroup(0)
    assert method.groups() == [[0, 1], [2]]
    with pytest.raises(ValueError, match="decay"):
        build_method(METHODS, "sel-update", 3, {"decay": 0.0})
