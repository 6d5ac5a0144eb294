"""SAMO against records of its reference code (tests/data/samo_outputs.json, made by
tests/data/make_samo_records.py from OptMN-Lab/SAMO's own training loops): at every recorded
step, from the reference's state and batch, each task's perturbed gradient (shared parameters
and head) — the CelebA trainer's 40 tasks on 26 shared parameters (T > P, rank-deficient; the
estimate rescaled per tensor) and the NYUv2 trainer's three dense tasks (the estimate raw,
adaptive perturbations). Then what the strategy adds around them: the base's update, the heads'
weights, unchanged batch-norm statistics, the degenerate rho = 0, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mtlbench.api import StepInfo
from mtlbench.core.errors import ConfigError
from mtlbench.grid.config import load_benchmark
from mtlbench.grid.plugins import discover
from mtlbench.plugin.method import build_method, method_version
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.strategies import ConflictProbe, SharpnessAwareGradients, StepContext, StepInputs, forward, strategy_for
from tests.conftest import REPO, make_project
from tests.data.make_samo_records import N_TASKS_CELEBA, CelebaNet, NyuNet, bce, nyu_data, celeba_data, nyu_loss

RECORDS = json.loads((REPO / "tests" / "data" / "samo_outputs.json").read_text())["cases"]
METHODS = discover(REPO).methods


class Named(nn.Module):
    """A records' model with named task outputs."""

    def __init__(self, net: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.net, self.names = net, names

    def forward(self, x):
        return dict(zip(self.names, self.net(x)))


def setup(case: str):
    """(model, shared, heads, losses_of, batches) for a record case."""
    c = RECORDS[case]
    if case == "celeba":
        net, names = CelebaNet(), [f"a{i}" for i in range(N_TASKS_CELEBA)]
        x, y = celeba_data(c["batch"] * len(c["steps"]), c["seed"])
        batches = [(x[j : j + c["batch"]], {n: y[j : j + c["batch"], i : i + 1] for i, n in enumerate(names)})
                   for j in range(0, len(x), c["batch"])]  # fmt: skip
        shared = list(net.shared_base.parameters())
        heads = [list(layer.parameters()) for layer in net.out_layer]

        def losses_of(outputs, y):
            return torch.stack([bce(outputs[n], y[n]) for n in names])
    else:
        net, names = NyuNet(), ["semantic", "depth", "normal"]
        data = nyu_data(c["batch"] * len(c["steps"]), c["seed"])
        batches = [(data[0][j : j + c["batch"]], {n: d[j : j + c["batch"]] for n, d in zip(names, data[1:])})
                   for j in range(0, len(data[0]), c["batch"])]  # fmt: skip
        shared = net.shared_parameters()
        heads = [list(getattr(net, f"pred_task{k + 1}").parameters()) for k in range(3)]

        def losses_of(outputs, y):
            return torch.stack([nyu_loss(outputs[n], y[n], k) for k, n in enumerate(names)])

    return Named(net, names), shared, heads, losses_of, batches


def context(shared, heads) -> StepContext:
    recorder = ConflictRecorder([str(i) for i in range(len(heads))], ["trunk"], [sum(p.numel() for p in shared)], every=0)
    return StepContext(shared, heads, ("loop", 1), lambda g: g, ConflictProbe(recorder, None, lambda g: g))


def samo(n_tasks: int, base: str = "ew", **options):
    return build_method(METHODS, "samo", n_tasks, {"base": base, **options})


def replay_directions(method, seeds: list[int]) -> None:
    """The reference's directions: torch's generator seeded with each task's recorded seed."""

    def directions(params, info):
        g = torch.Generator().manual_seed(seeds.pop(0))
        return [torch.normal(mean=0, std=1.0, size=p.size(), generator=g, dtype=p.dtype) for p in params]

    method.directions = directions


def info(step: int = 0) -> StepInfo:
    return StepInfo(step=step, epoch=0, steps_per_epoch=3, total_steps=3, generator=torch.Generator().manual_seed(0))


def within(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """max |a - b| <= tol max |b| (relative to the tensor's size, not entry by entry)."""
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-12)


@pytest.mark.parametrize("case", ["celeba", "nyuv2"])
def test_perturbed_gradients_match_the_reference_code(case):
    c = RECORDS[case]
    model, shared, heads, losses_of, batches = setup(case)
    n = len(heads)
    worst = 0.0
    for k, (step, (x, y)) in enumerate(zip(c["steps"], batches)):
        state = model.net.state_dict()
        model.net.load_state_dict({key: torch.tensor(v, dtype=state[key].dtype) for key, v in step["state"].items()})
        method = samo(n, **c["options"], zo_scale=c["zo_scale"])
        replay_directions(method, list(step["seeds"]))
        strategy = strategy_for(method)
        assert isinstance(strategy, SharpnessAwareGradients)
        ctx = context(shared, heads)
        ctx.inputs = StepInputs(model, torch.optim.SGD(model.parameters(), lr=0.1), losses_of, (x, y))
        model.train()
        losses = losses_of(forward(model, x), y)  # the trainer's forward (updates the running statistics)
        rows, head_grads = strategy.perturbed_gradients(losses, info(k), ctx)
        ref_rows = torch.tensor(step["shared"])
        assert rows.shape == ref_rows.shape == (n, sum(p.numel() for p in shared))
        ref_heads = [torch.tensor(g) for g in step["heads"]]
        ours_heads = [g.double() for gs in head_grads for g in gs]
        # the same float32 operations in the same order: equal but for the summation order of
        # float32 reductions (threads); 1e-5 of the largest entry bounds what that changes
        assert within(rows.double(), ref_rows, 1e-5), (k, (rows.double() - ref_rows).abs().max())
        for ours, ref in zip(ours_heads, ref_heads):
            assert within(ours, ref.reshape(ours.shape), 1e-5)
        worst = max(worst, float((rows.double() - ref_rows).abs().max() / ref_rows.abs().max()))
        # the perturbation matters: the perturbed gradients are not the plain ones
        plain = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses_of(forward(model, x), y)[i], shared)])
                             for i in range(n)])  # fmt: skip
        assert not torch.allclose(rows, plain, rtol=1e-4, atol=0)
    if case == "celeba":
        assert torch.linalg.matrix_rank(rows.double()) < n  # T > P: the matrix the base gets is rank-deficient


def test_the_step_is_the_base_update_of_the_perturbed_gradients_and_leaves_running_statistics():
    model, shared, heads, losses_of, batches = setup("nyuv2")
    x, y = batches[0]
    model.train()
    for base in ("ew", "upgrad", "dwa"):
        method = samo(3, base=base)
        strategy = strategy_for(method)
        before = {k: v.clone() for k, v in model.net.state_dict().items()}
        ctx = context(shared, heads)
        ctx.inputs = StepInputs(model, torch.optim.SGD(model.parameters(), lr=0.1), losses_of, (x, y))
        losses = losses_of(forward(model, x), y)
        after_forward = {k: v.clone() for k, v in model.net.state_dict().items()}
        gen_state = torch.Generator().manual_seed(5)
        step_info = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=gen_state)
        rows, head_grads = strategy.perturbed_gradients(losses, step_info, ctx)
        # the perturbed passes leave parameters and running statistics as the trainer's forward left them
        for k, v in model.net.state_dict().items():
            if "num_batches_tracked" not in k:
                assert torch.equal(v, after_forward[k]), k
        model.net.load_state_dict(before)
        losses = losses_of(forward(model, x), y)
        for p in model.parameters():
            p.grad = None
        strategy.fill_gradients([losses], StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1,
                                                   generator=torch.Generator().manual_seed(5)), ctx)  # fmt: skip
        update = torch.cat([p.grad.reshape(-1) for p in shared])
        base_method = build_method(METHODS, base, 3)
        expected = base_method.aggregate(rows, losses.detach(), info()) if base == "upgrad" else None
        if base == "ew":
            expected = rows.sum(0)
            for ps, gs in zip(heads, head_grads):
                for p, g in zip(ps, gs):
                    assert torch.allclose(p.grad, g)
        if expected is not None:
            assert torch.allclose(update, expected, rtol=1e-5, atol=1e-7), base
        else:  # a loss weighting as the base: its weights on the rows and on the heads
            w = method.head_weights()
            assert w is not None and torch.allclose(update, (w.to(rows) @ rows), rtol=1e-5, atol=1e-7)
        model.net.load_state_dict(before)


def test_rho_zero_gives_the_plain_task_gradients():
    model, shared, heads, losses_of, batches = setup("celeba")
    x, y = batches[0]
    model.train()
    method = samo(N_TASKS_CELEBA, rho=0.0)
    ctx = context(shared, heads)
    ctx.inputs = StepInputs(model, torch.optim.SGD(model.parameters(), lr=0.1), losses_of, (x, y))
    losses = losses_of(forward(model, x), y)
    rows, _ = strategy_for(method).perturbed_gradients(losses, info(), ctx)
    plain = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses_of(forward(model, x), y)[i], shared)])
                         for i in range(N_TASKS_CELEBA)])  # fmt: skip
    assert torch.allclose(rows, plain, rtol=1e-6, atol=1e-9)


def test_a_flat_estimate_adds_nothing_instead_of_dividing_by_zero():
    """Both losses of the estimate equal (a zero direction): the reference divides by the zero
    norm (NaN); here the mix is (1 - beta) g."""
    model, shared, heads, losses_of, batches = setup("celeba")
    x, y = batches[0]
    model.train()
    method = samo(N_TASKS_CELEBA)
    method.directions = lambda params, info: [torch.zeros_like(p) for p in params]
    ctx = context(shared, heads)
    ctx.inputs = StepInputs(model, torch.optim.SGD(model.parameters(), lr=0.1), losses_of, (x, y))
    rows, head_grads = strategy_for(method).perturbed_gradients(losses_of(forward(model, x), y), info(), ctx)
    assert torch.isfinite(rows).all() and all(torch.isfinite(g).all() for gs in head_grads for g in gs)


def test_base_and_version_and_clear_errors(tmp_path):
    method = samo(3, base="fairgrad")
    assert type(method.base).__name__ == "FairGrad" and method.max_norm == method.base.max_norm
    assert (
        method_version(METHODS, "samo", {"base": "fairgrad"})
        == f"{METHODS['samo'].version}+fairgrad-{METHODS['fairgrad'].version}"
    )
    with pytest.raises(TypeError, match="names a method; the engine builds it"):
        METHODS["samo"](n_tasks=3)
    for base, message in (
        ("nope", "is not a method"),
        ("mgda-ub", "needs other gradients"),
        ("modo", "needs other gradients"),
        ("auto-lambda", "more than one gradient matrix"),
        ("uw", "its own graph"),
        ("samo", "itself a wrapper"),
    ):
        with pytest.raises(ValueError, match=message):
            samo(3, base=base)
    toml = """
[backbones.r8]
model = "resnet18"
kwargs = { channels = [8, 8, 16, 16] }

[suites.s]
backbones = ["r8"]
methods = [{ name = "samo", options = { base = "mgda-ub" } }]
seeds = [0]
[suites.s.tasks.multimnist]
epochs = 1
"""
    with pytest.raises(ConfigError, match=r"suites\.s\.methods\[0\].*samo.*needs other gradients"):
        load_benchmark(make_project(tmp_path / "p", toml))


def test_validate_reads_a_wrapper_version_with_its_base(tmp_path):
    """A result's method version names the base's: the flagship's samo results validate, and one
    recorded against another fairgrad version is stale."""
    from mtlbench.report.validate import known_from_project, validate_paths

    known = known_from_project(REPO)
    result = REPO / "leaderboard" / "results" / "flagship" / "multimnist" / "resnet18-w16" / "samo__none__seed0.json"
    assert validate_paths([result], known).problems == []
    data = json.loads(result.read_text())
    data["method_version"] = data["cell"]["method_version"] = "1+fairgrad-1"
    stale = tmp_path / result.name
    stale.write_text(json.dumps(data))
    problems = validate_paths([stale], known).problems
    assert any(p.field == "method_version" and "fairgrad-2" in p.message for p in problems), problems


def test_wrapper_versions_order_by_their_own_then_their_bases():
    from mtlbench.core.registry import version_key

    assert version_key("1+fairgrad-2") < version_key("1+fairgrad-3") < version_key("2+fairgrad-1")
    assert version_key("1+fairgrad-2") == version_key("1+fairgrad-2") and version_key("1.10") > version_key("1.9")
