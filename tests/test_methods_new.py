"""SI, STCH and ExcessMTL, each checked step by step against an independent transcription of
its reference's formula (nash-mtl's SI; LibMTL's STCH and ExcessMTL), through the trainer's
per-step path on losses L_t = G[t] . theta + offset_t (so the task gradients are G's rows)."""

from __future__ import annotations

import math

import pytest
import torch

from mtlbench.api import StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.train.conflict import ConflictRecorder
from mtlbench.train.strategies import backward_update
from tests.conftest import REPO

METHODS = discover(REPO).methods
G = torch.tensor([[1.0, -2.0, 0.5], [-0.5, 1.0, 2.0], [0.3, 0.2, -1.0]], dtype=torch.float64)
OFFSETS = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def step(method, theta: torch.Tensor, epoch: int = 0, heads: list | None = None) -> torch.Tensor:
    """One trainer step's update of the shared theta (and, with ``heads``, the heads' grads)."""
    theta.grad = None
    t = G.shape[0]
    head_params = heads or [[] for _ in range(t)]
    losses = G @ theta + OFFSETS + (torch.stack([h[0].sum() for h in heads]) if heads else 0)
    info = StepInfo(step=0, epoch=epoch, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(0))
    recorder = ConflictRecorder([str(i) for i in range(t)], ["theta"], [G.shape[1]], every=0)
    backward_update(method, losses, info, [theta], head_params, recorder, ("loop", 1), None, None)
    return theta.grad.detach().clone()


def test_si_divides_each_gradient_by_its_loss():
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    d = step(METHODS["si"](n_tasks=3).double(), theta)
    assert torch.allclose(d, (G / OFFSETS.unsqueeze(1)).sum(0), rtol=1e-12)


def test_stch_warms_up_then_takes_the_smooth_maximum():
    method = METHODS["stch"](n_tasks=3, mu=0.5, warmup_epochs=1).double()
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    warm = step(method, theta, epoch=0)  # log-loss warm-up, nothing recorded
    assert torch.allclose(warm, (G / OFFSETS.unsqueeze(1)).sum(0)) and int(method.count) == 0
    thetas = [torch.tensor([0.1, 0.0, 0.0]), torch.tensor([0.0, -0.1, 0.2])]
    seen = []
    for th in thetas:  # the last warm-up epoch records the losses
        th = th.double().requires_grad_()
        step(method, th, epoch=1)
        seen.append((G @ th + OFFSETS).detach())
    nadir = torch.stack(seen).mean(0)
    theta = torch.tensor([0.2, 0.1, -0.1], dtype=torch.float64, requires_grad=True)
    d = step(method, theta, epoch=2)
    losses = (G @ theta + OFFSETS).detach()
    # LibMTL: loss = mu log sum exp((log(L/z) - max) / mu) T; its gradient w.r.t. L_i is T softmax_i / L_i
    u = torch.log(losses / nadir + 1e-20)
    soft = torch.softmax(u / 0.5, dim=0)
    assert torch.allclose(method.nadir, nadir) and torch.allclose(d, (3 * soft / losses) @ G, rtol=1e-10)
    assert torch.allclose(method.weights(losses, StepInfo(0, 2, 1, 1)), 3 * soft / losses)


def test_excess_mtl_follows_libmtl_over_three_steps():
    method = METHODS["excess-mtl"](n_tasks=3, robust_step_size=0.5).double()
    heads = [[torch.ones(1, dtype=torch.float64, requires_grad=True)] for _ in range(3)]
    grad_sum, lam, initial = torch.zeros_like(G), torch.ones(3, dtype=torch.float64), None
    for k in range(3):
        theta = torch.full((3,), 0.1 * k, dtype=torch.float64, requires_grad=True)
        for h in heads:
            h[0].grad = None
        d = step(method, theta, heads=heads)
        # LibMTL's loop, transcribed
        grad_sum = grad_sum + G**2
        w = torch.stack([G[i] * (1 / torch.sqrt(grad_sum[i] + 1e-7)) @ G[i] for i in range(3)])
        if initial is None:
            initial = w
        else:
            lam = lam * torch.exp((w / initial) * 0.5)
            lam = lam / lam.sum() * 3
        assert torch.allclose(d, lam @ G, rtol=1e-12), k
        assert torch.allclose(torch.cat([h[0].grad for h in heads]), lam), k  # the heads see the weighted loss
    assert not math.isclose(float(lam[0]), 1.0)


@pytest.mark.parametrize("name", ["si", "stch", "excess-mtl"])
def test_new_methods_train_a_cell(name, tmp_path):
    from mtlbench.cli import main
    from tests.conftest import TINY_TOML, make_project

    toml = TINY_TOML.replace('methods = ["stl", "ew", "mgda", "pcgrad"]', f'methods = ["{name}"]')
    config = make_project(tmp_path / "p", toml)
    assert main(["run", "--config", str(config), "--results", str(tmp_path / "r"), "--no-progress", "--only", "seed=0"]) == 0
