"""The reference methods on gradient matrices: pinned outputs, analytic cases, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlbench.api import StepInfo
from mtlbench.grid.plugins import discover
from tests.conftest import REPO

METHODS = discover(REPO).methods
PINNED = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)


def info(seed: int = 0) -> StepInfo:
    return StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(seed))


def aggregate(name: str, g: torch.Tensor, seed: int = 0, **options) -> torch.Tensor:
    m = METHODS[name](n_tasks=g.shape[0], **options)
    return m.aggregate(g, torch.ones(g.shape[0], dtype=g.dtype), info(seed))


def random_matrices(n: int = 60):
    gen = torch.Generator().manual_seed(1234)
    for k in range(n):
        t = 2 + k % 5
        p = 3 + (k * 7) % 20
        yield torch.randn(t, p, generator=gen, dtype=torch.float64) * torch.rand(t, 1, generator=gen, dtype=torch.float64).add(0.1)


def test_ew_weights_are_ones():
    w = METHODS["ew"](n_tasks=3).weights(torch.tensor([0.3, 2.0, 5.0]), info())
    assert w.tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------ MGDA

def test_mgda_pinned():
    # K = [[18, -22], [-22, 38]] -> a = (38 + 22) / (18 + 44 + 38) = 0.6 -> 0.6 g1 + 0.4 g2
    assert aggregate("mgda", PINNED).tolist() == pytest.approx([0.0, 1.0, 1.0], abs=1e-12)


def test_mgda_analytic_cases():
    e = torch.eye(3, dtype=torch.float64)
    assert aggregate("mgda", e[:2]).tolist() == pytest.approx([0.5, 0.5, 0.0])  # orthogonal, equal norms
    g = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    assert aggregate("mgda", g).tolist() == pytest.approx([1.0, 2.0, 3.0])  # identical
    opposite = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], dtype=torch.float64)
    assert aggregate("mgda", opposite).abs().max() < 1e-12  # Pareto-stationary: zero update
    # one gradient inside the hull's min-norm face: orthogonal with norms 1 and 2 -> weights (0.8, 0.2)
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert aggregate("mgda", g).tolist() == pytest.approx([0.8, 0.4])


@pytest.mark.parametrize("g", list(random_matrices()), ids=lambda g: f"T{g.shape[0]}xP{g.shape[1]}")
def test_mgda_is_the_min_norm_point_of_the_convex_hull(g):
    d = aggregate("mgda", g)
    # optimality certificate of the min-norm point d of conv{g_i}: g_i . d >= ||d||^2 for all i
    assert (g @ d >= d @ d - 1e-9 * max(1.0, float(d @ d))).all()
    # and it matches a generic solver
    from scipy.optimize import minimize

    k = (g @ g.T).numpy()
    t = g.shape[0]
    res = minimize(lambda a: a @ k @ a, np.full(t, 1 / t), jac=lambda a: 2 * k @ a, method="SLSQP",
                   bounds=[(0, 1)] * t, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
                   options={"ftol": 1e-14, "maxiter": 500})
    assert float(d @ d) <= res.fun + 1e-9


def test_mgda_l2_combines_the_normalised_gradients_as_libmtl():
    """The weights are the min-norm point of the normalised gradients, and they combine the
    normalised gradients (LibMTL's MGDA; version 1 combined the raw ones, which conflicted)."""
    g = torch.tensor([[10.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    plain = aggregate("mgda", g)
    l2 = aggregate("mgda", g, normalization="l2")  # normalised gradients are orthonormal -> a = (1/2, 1/2)
    assert plain.tolist() == pytest.approx([10 / 101, 100 / 101])
    assert l2.tolist() == pytest.approx([0.5, 0.5])
    g = torch.tensor([[10.0, 0.0], [-0.1, 0.1]], dtype=torch.float64)
    l2 = aggregate("mgda", g, normalization="l2")
    assert l2.tolist() == pytest.approx([0.14644661, 0.35355339])  # LibMTL's output on this matrix
    assert (g @ l2 >= 0).all()  # version 1 gave [4.95, 0.05], conflicting with task 2


# ------------------------------------------------------------------ PCGrad

def test_pcgrad_pinned():
    # g1' = g1 + 22/38 g2, g2' = g2 + 22/18 g1, update = g1' + g2'
    expected = PINNED[0] + 22 / 38 * PINNED[1] + PINNED[1] + 22 / 18 * PINNED[0]
    assert aggregate("pcgrad", PINNED).tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert aggregate("pcgrad", PINNED).tolist() == pytest.approx([0.5847953, 3.8011696, 3.8011696], abs=1e-6)


def test_pcgrad_analytic_cases():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert aggregate("pcgrad", g).tolist() == [1.0, 1.0]  # no conflict: plain sum
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert aggregate("pcgrad", opposite).abs().max() < 1e-12  # each projected to zero
    zero = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    assert aggregate("pcgrad", zero).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("g", [g[:2] for g in random_matrices(30)], ids=lambda g: f"P{g.shape[1]}")
def test_pcgrad_two_tasks_never_conflicts_with_either_task(g):
    d = aggregate("pcgrad", g)
    assert (g @ d >= -1e-10).all()


def test_pcgrad_is_reproducible_given_the_generator():
    g = next(iter(random_matrices(5)))
    for seed in range(3):
        assert torch.equal(aggregate("pcgrad", g, seed=seed), aggregate("pcgrad", g, seed=seed))


@pytest.mark.parametrize("name", ["mgda", "pcgrad"])
@pytest.mark.parametrize("g", list(random_matrices(20)), ids=lambda g: f"T{g.shape[0]}")
def test_gradient_methods_return_finite_vectors_of_the_right_shape(name, g):
    d = aggregate(name, g)
    assert d.shape == (g.shape[1],) and torch.isfinite(d).all()


def test_every_method_declares_its_citation():
    for name, cls in METHODS.items():
        assert cls.citation and cls.description, name


# ------------------------------------------------------------------ fixes pinned (version 2 of each method)


def _fixed_orders(monkeypatch, orders: list[list[int]]) -> None:
    queue = iter(orders)
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.tensor(next(queue)))


def test_pcgrad_projects_onto_its_own_gradient_too(monkeypatch):
    """Once projected, g_i' may conflict with its own g_i: the references project it then too."""
    g = torch.tensor([[-0.8, -0.3], [0.0, -0.3], [1.3, 1.0]], dtype=torch.float64)
    _fixed_orders(monkeypatch, [[0, 1, 2], [1, 2, 0], [1, 0, 2]])
    d = aggregate("pcgrad", g)
    assert d.tolist() == pytest.approx([0.19355299, -0.36073229])  # version 1 skipped j = i: [0.0877, -0.4422]


def test_config_is_zero_where_its_direction_vanishes():
    g = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]], dtype=torch.float64)
    for scale in (1.0, 1e3):
        for rows in (g, torch.cat([g, 2 * g])):  # rank 1, balanced signs
            assert aggregate("config", scale * rows).abs().max() == 0.0


def test_gradvac_stays_finite_on_a_scaled_rank_one_matrix():
    g = torch.tensor([[1.0, 2.0, -1.0], [-2.0, -4.0, 2.0], [3.0, 6.0, -3.0]], dtype=torch.float64) * 1e3
    for seed in range(5):
        assert torch.isfinite(aggregate("gradvac", g, seed=seed)).all()


def test_mgda_float32_rank_deficient_is_the_min_norm_point():
    """T = 10 tasks of rank 2 in float32: the Gram matrix is accumulated in float64, so the
    min-norm problem is solved exactly (version 1 ran Wolfe's loop to its iteration cap)."""
    gen = torch.Generator().manual_seed(0)
    g = (torch.randn(10, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 50, generator=gen, dtype=torch.float64)).float()
    method = METHODS["mgda"](n_tasks=10)
    d = method.aggregate(g, torch.ones(10), StepInfo(0, 0, 1, 1)).double()
    gd = g.double()
    assert (gd @ d >= d @ d - 1e-5 * float(gd.norm()) ** 2).all()  # the min-norm point's certificate


def test_mgda_weights_do_not_depend_on_the_gradients_scale():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(10, 100, generator=gen, dtype=torch.float64)
    d = aggregate("mgda", g)
    assert torch.allclose(aggregate("mgda", 1e3 * g), 1e3 * d, rtol=1e-9)  # version 1 returned 0 at scale 1e3


def test_db_mtl_defaults_are_libmtl_s():
    assert METHODS["db-mtl"].option_defaults() == {"beta": 0.9, "beta_sigma": 0.0}
