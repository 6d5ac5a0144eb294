"""Method properties in torchjd's style: each gradient method declares what it guarantees
(``properties``, see mtlbench.plugin.method.METHOD_PROPERTIES) and these tests check every
claim over many seeded matrices, hard ones included: T = 2..10, P up to 100, T > P,
rank-deficient, a zero row, gradients scaled by 1e-3 and 1e3, in float32 and float64. Every
method must return a finite update of the right shape and dtype on all of them (or raise
NoSolutionError where it declares it may)."""

from __future__ import annotations

import pytest
import torch

from mtlbench.api import METHOD_PROPERTIES, LastLayerBayes, SequentialGroups, SharpnessAware, StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.plugin.solvers import NoSolutionError
from tests.conftest import REPO

METHODS = discover(REPO).methods
# methods that run the model again or need more than the gradient matrix (a wrapper's perturbed
# passes, a Bayesian last layer, sequential group updates): not functions of one matrix; their own
# tests (test_samo.py, test_bayes_agg.py, test_sel_update.py) check them against their references
MODEL_BOUND = (SharpnessAware, LastLayerBayes, SequentialGroups)
GRADIENT = sorted(n for n, c in METHODS.items() if c.kind == "gradient" and not issubclass(c, MODEL_BOUND))
# CAGrad's inner objective is flat near its optimum: its weights are exact to ~1e-6
RELATIVE_TOL = {"cagrad": 1e-7}


def hard_matrices() -> list[tuple[str, torch.Tensor, bool]]:
    """(label, float64 matrix, linearly independent rows?) — seeded, hard cases included."""
    gen = torch.Generator().manual_seed(2024)
    out = []
    for k, (t, p) in enumerate([(2, 5), (3, 8), (4, 20), (5, 100), (7, 30), (10, 100), (6, 4), (10, 3), (3, 2)]):
        g = torch.randn(t, p, generator=gen, dtype=torch.float64) * (torch.rand(t, 1, generator=gen, dtype=torch.float64) * 3 + 0.2)
        out.append((f"random T{t} P{p}", g, t <= p))
        rank = max(1, min(t, p) // 2)
        low = torch.randn(t, rank, generator=gen, dtype=torch.float64) @ torch.randn(rank, p, generator=gen, dtype=torch.float64)
        out.append((f"rank{rank} T{t} P{p}", low, rank == t))
        if k % 2 == 0:
            zero = g.clone()
            zero[k % t] = 0
            out.append((f"zero row T{t} P{p}", zero, False))
    for t, p, rank in ((5, 100, 4), (9, 50, 7), (3, 20, 2)):
        out.append((f"weakly stationary rank{rank} T{t} P{p}", weakly_stationary(t, p, rank, gen), False))
    out.append(("rank-1 balanced", torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0], [2.0, 4.0, -2.0], [-2.0, -4.0, 2.0]],
                                                dtype=torch.float64), False))
    return out


def weakly_stationary(t: int, p: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """A (t, p) matrix of rank ``rank`` with a non-negative, not positive, combination of its rows
    at zero (torchjd's "strictly weakly stationary" inputs): rows orthogonal in task space to a
    non-negative v with zeros. Nash-MTL's equation has no solution; once rounded to float32 it
    has one with weights of ~1e7 (version 2 returned updates that conflicted with a task there)."""
    u = torch.rand(t, generator=gen, dtype=torch.float64) + 0.1
    v = torch.where(torch.arange(t) < t // 2 + 1, u, torch.zeros_like(u))
    v = v / v.norm()
    basis = torch.randn(t, t, generator=gen, dtype=torch.float64)
    basis = basis - torch.outer(v, v @ basis)  # columns orthogonal to v
    q, _ = torch.linalg.qr(basis)
    rows = torch.randn(rank, p, generator=gen, dtype=torch.float64)
    return q[:, :rank] @ rows


MATRICES = hard_matrices()
CASES = [(label, g * scale, indep, dtype) for label, g, indep in MATRICES for scale in (1e-3, 1.0, 1e3)
         for dtype in (torch.float64, torch.float32)]


# the option sets each property is checked under (a method's properties_for says which hold)
OPTION_SETS = {
    "mgda": [{"normalization": n} for n in ("none", "l2", "loss", "loss+")],
    "mgda-ub": [{"normalization": n} for n in ("none", "l2", "loss", "loss+")],
    "cagrad": [{"rescale": r} for r in (0, 1, 2)],
    "gradvac": [{"granularity": g} for g in ("whole", "layer")],
}


def variants() -> list[tuple[str, dict]]:
    return [(n, o) for n in GRADIENT for o in OPTION_SETS.get(n, [{}])]


def _id(name: str, options: dict) -> str:
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()])


def aggregate(name: str, g: torch.Tensor, options: dict | None = None, losses: torch.Tensor | None = None) -> torch.Tensor:
    """A fresh method's first update (state and random draws start from the same seed); losses
    of 1, 2, ... so that loss normalisations are not the identity."""
    method = METHODS[name](n_tasks=g.shape[0], **(options or {})).to(g.dtype)
    info = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=torch.Generator().manual_seed(0),
                    layer_sizes=(g.shape[1],))
    losses = torch.arange(1, g.shape[0] + 1, dtype=g.dtype) if losses is None else losses
    return method.aggregate(g, losses, info)


def may_raise(name: str, independent: bool, g: torch.Tensor) -> bool:
    return "may_raise_on_dependent" in METHODS[name].properties and not independent


def tolerance(name: str, dtype: torch.dtype) -> float:
    return RELATIVE_TOL.get(name, 1e-9 if dtype == torch.float64 else 2e-4)


def noise(name: str, g: torch.Tensor) -> float:
    """The absolute error an update of ``g`` may carry whatever its size: rounding in the
    combination (eps T ||G||)."""
    return float(torch.finfo(g.dtype).eps * g.shape[0] * g.norm())


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    """||a - b|| <= rtol ||b|| + atol (vectors compared as vectors, not entry by entry)."""
    return float((a - b).norm()) <= rtol * float(b.norm()) + atol


def test_every_declared_property_is_known():
    for name, cls in METHODS.items():
        assert set(cls.properties) <= set(METHOD_PROPERTIES), name
    for name, options in variants():
        assert METHODS[name].properties_for(options) <= set(METHOD_PROPERTIES), (name, options)


# gradients of 1e10 (MoDo's simplex projection raised a RuntimeError beyond ~2^53): only a finite
# update (or NoSolutionError) is asserted there
HUGE = [(label, g * 1e10, indep, dtype) for label, g, indep in MATRICES for dtype in (torch.float64, torch.float32)]


@pytest.mark.parametrize(("name", "options"), [pytest.param(n, o, id=_id(n, o)) for n, o in variants()])
def test_finite_update_of_the_right_shape_on_hard_inputs(name, options):
    for label, g, indep, dtype in CASES + HUGE:
        g = g.to(dtype)
        try:
            d = aggregate(name, g, options)
        except NoSolutionError:
            assert may_raise(name, indep, g), (name, label, dtype)
            continue
        assert d.shape == (g.shape[1],) and d.dtype == dtype and torch.isfinite(d).all(), (name, label, dtype)


def _claimed(prop: str) -> list:
    return [pytest.param(n, o, id=_id(n, o)) for n, o in variants() if prop in METHODS[n].properties_for(o)]


@pytest.mark.parametrize(("name", "options"), _claimed("non_conflicting") + _claimed("non_conflicting_if_independent"))
def test_declared_non_conflicting_never_conflicts(name, options):
    conditional = "non_conflicting_if_independent" in METHODS[name].properties_for(options)
    for label, g, indep, dtype in CASES:
        if conditional and not indep:
            continue
        g = g.to(dtype)
        try:
            d = aggregate(name, g, options)
        except NoSolutionError:
            continue
        # relative to the update's norm, plus its rounding noise (when the update is nearly zero);
        # a scale-invariant update is made of unit-norm gradients: its noise is theirs
        unit = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        scale_free = "scale_invariant" in METHODS[name].properties_for(options)
        tol = g.norm(dim=1) * (tolerance(name, dtype) * d.norm() + noise(name, unit if scale_free else g))
        assert (g @ d >= -tol).all(), (name, label, dtype, (g @ d).tolist())


@pytest.mark.parametrize(("name", "options"), _claimed("permutation_invariant"))
def test_declared_permutation_invariance(name, options):
    for k, (label, g, indep, dtype) in enumerate(CASES):
        g = g.to(dtype)
        perm = torch.randperm(g.shape[0], generator=torch.Generator().manual_seed(k))
        losses = torch.arange(1, g.shape[0] + 1, dtype=dtype)
        try:
            d, permuted = aggregate(name, g, options), aggregate(name, g[perm], options, losses[perm])
        except NoSolutionError:
            continue
        tol = tolerance(name, dtype) * 100
        assert close(permuted, d, tol, 100 * noise(name, g)), (name, label, dtype)


@pytest.mark.parametrize(("name", "options"), _claimed("linear_under_scaling") + _claimed("scale_invariant"))
def test_declared_behaviour_under_scaling(name, options):
    """Every option set is checked against what ``properties_for`` declares for it (MGDA with
    ``l2`` normalisation is scale invariant, not linear: the review found G = diag(1, 2) and
    1e-3 G giving the same update)."""
    power = 1 if "linear_under_scaling" in METHODS[name].properties_for(options) else 0
    for label, g64, _ in MATRICES:
        for dtype in (torch.float64, torch.float32):  # float32: rank-deficient at float32 precision once rounded
            g = g64.to(dtype)
            try:
                d = aggregate(name, g, options)
            except NoSolutionError:
                continue
            for c in (1e-3, 1e3):
                try:
                    scaled = aggregate(name, c * g, options)
                except NoSolutionError:
                    assert "may_raise_on_dependent" in METHODS[name].properties, (name, label, c, dtype)
                    continue
                tol = tolerance(name, dtype) * 100
                atol = 100 * noise(name, c * g) * c ** (power - 1)
                assert close(scaled, c**power * d, tol, atol), (name, label, c, dtype)


def test_mgda_l2_is_scale_invariant_not_linear():
    """The review's case, by hand: unit-normalised gradients diag(1, 1) -> min-norm point (0.5, 0.5)."""
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    for c in (1.0, 1e-3):
        assert torch.allclose(aggregate("mgda", c * g, {"normalization": "l2"}), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert METHODS["mgda"].properties_for({"normalization": "l2"}) >= {"scale_invariant", "non_conflicting"}
    assert "linear_under_scaling" not in METHODS["mgda"].properties_for({"normalization": "loss+"})
