"""Every method on gradient matrices: properties over many seeded random matrices, analytic
cases (orthogonal, identical, opposite gradients), comparisons with torchjd's implementations,
and state that survives a state_dict round trip."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from mtlbench.api import LastLayerBayes, SequentialGroups, SharpnessAware, StepInfo
from mtlbench.grid.plugins import discover
from mtlbench.plugin.solvers import NoSolutionError, power_balance_weights
from tests.conftest import REPO

METHODS = discover(REPO).methods
# methods that run the model again or need more than the gradient matrix (a wrapper's perturbed
# passes, a Bayesian last layer, sequential group updates): not functions of one matrix; their own
# tests (test_samo.py, test_bayes_agg.py, test_sel_update.py) check them against their references
MODEL_BOUND = (SharpnessAware, LastLayerBayes, SequentialGroups)
GRADIENT = sorted(n for n, c in METHODS.items() if c.kind == "gradient" and not issubclass(c, MODEL_BOUND))
WEIGHTING = sorted(n for n, c in METHODS.items() if c.kind == "weighting")
# random (shuffled task order, dropped signs) or history-dependent after the first step
NOT_PERMUTATION_EQUIVARIANT = {"pcgrad", "gradvac"}  # shuffles for T > 2
# what each method declares (tests/test_method_properties.py checks the claims on hard inputs);
# the random matrices here have linearly independent rows, and upgrad/dualproj are run with
# reg_eps -> 0 below, where their projection is exact
NON_CONFLICTING = {n for n, c in METHODS.items() if {"non_conflicting", "non_conflicting_if_independent"} & c.properties}
NON_CONFLICTING |= {"upgrad", "dualproj"}


def info(seed: int = 0, epoch: int = 0, layer_sizes: tuple[int, ...] = ()) -> StepInfo:
    return StepInfo(step=0, epoch=epoch, steps_per_epoch=1, total_steps=1,
                    generator=torch.Generator().manual_seed(seed), layer_sizes=layer_sizes)


def make(name: str, t: int, **options):
    return METHODS[name](n_tasks=t, **options).double()


def aggregate(name: str, g: torch.Tensor, seed: int = 0, losses: torch.Tensor | None = None, **options) -> torch.Tensor:
    losses = torch.ones(g.shape[0], dtype=g.dtype) if losses is None else losses
    return make(name, g.shape[0], **options).aggregate(g, losses, info(seed, layer_sizes=(g.shape[1],)))


def random_matrices(n: int, seed: int = 99, max_t: int = 6):
    """Well-posed random (T, P) matrices, T <= P, of mixed scales."""
    gen = torch.Generator().manual_seed(seed)
    for k in range(n):
        t = 2 + k % (max_t - 1)
        p = t + 1 + (k * 5) % 17
        scale = torch.rand(t, 1, generator=gen, dtype=torch.float64) * 3 + 0.2
        yield torch.randn(t, p, generator=gen, dtype=torch.float64) * scale


MATRICES = list(random_matrices(24))


def conflicting_matrices(n: int):
    """Random matrices with at least one conflicting pair (where methods differ from the mean)."""
    out = []
    for g in random_matrices(4 * n, seed=7):
        cos = torch.nn.functional.cosine_similarity(g.unsqueeze(1), g.unsqueeze(0), dim=2)
        if (cos < -0.05).any():
            out.append(g)
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------ properties, every gradient method

@pytest.mark.parametrize("name", GRADIENT)
def test_shape_finiteness_and_permutation(name):
    for k, g in enumerate(MATRICES[:12]):
        d = aggregate(name, g)
        assert d.shape == (g.shape[1],) and torch.isfinite(d).all(), (name, k)
        if name in NOT_PERMUTATION_EQUIVARIANT and g.shape[0] > 2:
            continue
        perm = torch.randperm(g.shape[0], generator=torch.Generator().manual_seed(k))
        permuted = aggregate(name, g[perm])
        tol = 1e-5 if name == "cagrad" else 1e-7  # CAGrad's objective is flat near its optimum
        assert torch.allclose(permuted, d, rtol=tol, atol=tol * d.norm()), (name, k)


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_non_conflicting_methods_never_conflict(name):
    for k, g in enumerate(conflicting_matrices(12)):
        options = {"nash-mtl": {"max_norm": 0.0}, "upgrad": {"reg_eps": 1e-12}, "dualproj": {"reg_eps": 1e-12}}
        d = aggregate(name, g, **options.get(name, {}))  # torchjd's default reg_eps = 1e-4 blurs the QP
        tol = 1e-6 if name in ("upgrad", "dualproj") else 1e-9
        assert (g @ d >= -tol * g.norm(dim=1) * d.norm()).all(), (name, k, (g @ d).tolist())


def test_upgrad_and_dualproj_are_torchjd():
    from torchjd.aggregation import DualProj, UPGrad

    for g in conflicting_matrices(5):
        assert torch.allclose(aggregate("upgrad", g), UPGrad()(g), atol=1e-10)
        assert torch.allclose(aggregate("dualproj", g), DualProj()(g), atol=1e-10)


def test_dualproj_is_the_mean_when_the_mean_does_not_conflict():
    g = torch.tensor([[1.0, 0.2, 0.0], [0.3, 1.0, 0.1]], dtype=torch.float64)
    assert torch.allclose(aggregate("dualproj", g), g.mean(0), atol=1e-6)
    assert torch.allclose(aggregate("upgrad", g), g.mean(0), atol=1e-6)


def test_config_has_equal_cosines_with_every_task():
    for g in MATRICES[:10]:
        d = aggregate("config", g)
        cos = torch.nn.functional.cosine_similarity(g, d.unsqueeze(0), dim=1)
        assert torch.allclose(cos, cos.mean().expand_as(cos), atol=1e-8) and cos.min() > 0


def test_imtl_g_is_not_non_conflicting():
    """IMTL-G equalises the projections onto the unit gradients; that common projection can be
    negative: on this full-rank matrix the update conflicts with every task (torchjd's IMTLG too)."""
    from torchjd.aggregation import IMTLG

    g = torch.tensor([[-0.2, -1.0, 0.6], [-0.2, -0.4, 0.5], [-0.5, 1.4, 0.4]], dtype=torch.float64)
    d = aggregate("imtl-g", g)
    assert (g @ d < 0).all() and torch.allclose(d, IMTLG()(g), atol=1e-10)
    assert "non_conflicting" not in METHODS["imtl-g"].properties


def test_imtl_g_projections_are_equal_and_weights_sum_to_one():
    for g in MATRICES[:10]:
        d = aggregate("imtl-g", g)
        proj = g @ d / g.norm(dim=1)
        assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-8)
        a = torch.linalg.lstsq(g.T, d.unsqueeze(1)).solution.squeeze(1)  # d = a^T G, G full row rank
        assert a.sum().item() == pytest.approx(1.0, abs=1e-8)


def test_imtl_g_matches_libmtl_closed_form():
    for g in MATRICES[:10]:
        u = g / g.norm(dim=1, keepdim=True)
        diff, udiff = g[:1] - g[1:], u[:1] - u[1:]
        a = g[0] @ udiff.T @ torch.linalg.inv(diff @ udiff.T)
        a = torch.cat([1 - a.sum().unsqueeze(0), a])
        assert torch.allclose(aggregate("imtl-g", g), a @ g, rtol=1e-7, atol=1e-9)


def test_nash_mtl_solves_its_bargaining_equation():
    for g in MATRICES[:12]:
        k = g @ g.T
        alpha = power_balance_weights(k)
        assert (alpha > 0).all()
        assert torch.allclose(k @ alpha, 1 / alpha, rtol=1e-9)
        assert torch.allclose(aggregate("nash-mtl", g, max_norm=0.0), alpha @ g)
        clipped = aggregate("nash-mtl", g)
        assert clipped.norm() <= 1.0 + 1e-12


def test_fairgrad_solves_its_fairness_equation():
    for alpha in (0.5, 1.0, 2.0):
        for g in MATRICES[:8]:
            d = aggregate("fairgrad", g, alpha=alpha)
            w = torch.linalg.lstsq(g.T, d.unsqueeze(1)).solution.squeeze(1)
            assert (w > 0).all()
            assert torch.allclose(g @ g.T @ w, w.pow(-1 / alpha), rtol=1e-7)


def test_cagrad_improves_the_worst_task_at_least_as_much_as_the_mean():
    for g in conflicting_matrices(10):
        d = aggregate("cagrad", g, rescale=0)
        g0 = g.mean(0)
        assert (d - g0).norm() <= 0.5 * g0.norm() * (1 + 1e-9)  # inside the ball
        assert (g @ d).min() >= (g @ g0).min() - 1e-9


def test_cagrad_rescale_options():
    g = MATRICES[3]
    plain = aggregate("cagrad", g, rescale=0)
    assert torch.allclose(aggregate("cagrad", g), plain / 1.25)
    assert torch.allclose(aggregate("cagrad", g, rescale=2), plain / 1.5)


def test_aligned_mtl_rows_become_orthogonal_with_equal_norms():
    for g in MATRICES[:10]:
        d = aggregate("aligned-mtl", g)
        lam_min = torch.linalg.eigvalsh(g @ g.T).min()
        # d = 1^T B G with (B G)(B G)^T = lam_min I  =>  ||d||^2 = T lam_min
        assert (d @ d).item() == pytest.approx(g.shape[0] * lam_min.item(), rel=1e-8)


def test_graddrop_keeps_one_sign_per_coordinate():
    for seed, g in enumerate(conflicting_matrices(6)):
        d = aggregate("graddrop", g, seed=seed)
        pos, neg = g.clamp(min=0).sum(0), g.clamp(max=0).sum(0)
        assert all(math.isclose(v, a, abs_tol=1e-12) or math.isclose(v, b, abs_tol=1e-12)
                   for v, a, b in zip(d.tolist(), pos.tolist(), neg.tolist()))
        assert torch.allclose(aggregate("graddrop", g, seed=seed, leak=1.0), g.sum(0))


def test_gradvac_first_step_is_pcgrad_for_two_tasks():
    for g in conflicting_matrices(8):
        g = g[:2]
        assert torch.allclose(aggregate("gradvac", g), aggregate("pcgrad", g), rtol=1e-6, atol=1e-9)


def test_gradvac_layer_granularity_uses_the_layer_blocks():
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0], [-1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    m = make("gradvac", 2, granularity="layer")
    d = m.aggregate(g, torch.ones(2, dtype=g.dtype), info(layer_sizes=(2, 2)))
    assert m.targets.shape == (2, 2, 2)
    # first layer conflicts (PCGrad projection), second layer is aligned (summed)
    assert d.tolist() == pytest.approx([0.5, 1.5, 2.0, 0.0])
    with pytest.raises(ValueError, match="layer sizes"):
        m.aggregate(g, torch.ones(2, dtype=g.dtype), info(layer_sizes=(1, 2)))


def test_db_mtl_balances_log_gradients_to_the_largest_norm():
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = aggregate("db-mtl", g, losses=torch.tensor([1.0, 0.5], dtype=torch.float64))
    # log-gradients (2, 0), (0, 2); the moving average starts at 0: 0.1 of them at the first step
    assert d.tolist() == pytest.approx([0.2, 0.2], rel=1e-7)


def test_gradnorm_first_epoch_is_ew_then_learns_weights_toward_balance():
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = make("gradnorm", 2)
    losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert m.aggregate(g, losses, info(epoch=0)).tolist() == [2.0, 1.0]
    d = m.aggregate(g, losses, info(epoch=1))
    assert d.tolist() == pytest.approx([2.0, 1.0])  # weights start at 1
    assert m.scale.grad[0] > 0 > m.scale.grad[1]  # descent lowers the larger gradient's weight


def test_moco_tracks_the_scaled_gradients():
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = make("moco", 2)
    losses = torch.tensor([2.0, 1.0], dtype=torch.float64)
    for _ in range(200):
        d = m.aggregate(g, losses, info())
    scaled = g / g.norm(dim=1, keepdim=True) * losses.unsqueeze(1)
    assert torch.allclose(m.tracked, scaled, atol=1e-3)
    assert m.lambd.sum().item() == pytest.approx(1.0) and torch.allclose(d, m.lambd @ m.tracked)
    assert m.lambd[1] > m.lambd[0]  # the smaller tracked gradient gets more weight (min-norm objective)


# ------------------------------------------------------------------ analytic cases

E = torch.eye(2, dtype=torch.float64)
G = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
ORTHOGONAL = {  # g1 = e1, g2 = e2
    "mgda": [0.5, 0.5], "mgda-ub": [0.5, 0.5], "pcgrad": [1, 1], "graddrop": [1, 1], "gradvac": [1, 1],
    "cagrad": [0.6, 0.6], "imtl-g": [0.5, 0.5], "nash-mtl": [2**-0.5, 2**-0.5], "aligned-mtl": [1, 1],
    "aligned-mtl-ub": [1, 1], "upgrad": [0.5, 0.5], "dualproj": [0.5, 0.5], "config": [1, 1],
    "fairgrad": [1, 1], "moco": [0.25, 0.25], "db-mtl": [0.1, 0.1], "gradnorm": [1, 1], "excess-mtl": [1, 1],
    "sdmgrad": [0.5, 0.5], "modo": [0.5, 0.5],  # the same batch three times: weights stay at 1/2
}
IDENTICAL = {  # g1 = g2 = g = (1, 2): multiples of g
    "mgda": 1, "mgda-ub": 1, "pcgrad": 2, "graddrop": 2, "gradvac": 2, "cagrad": 1.2, "imtl-g": 1,
    "nash-mtl": 1 / math.sqrt(5), "aligned-mtl": 2, "aligned-mtl-ub": 2, "upgrad": 1, "dualproj": 1,
    "config": 2, "fairgrad": math.sqrt(2) / math.sqrt(5), "db-mtl": 0.2, "gradnorm": 2,
    "moco": 0.5 / math.sqrt(5), "excess-mtl": 2, "sdmgrad": 1, "modo": 1,
}
OPPOSITE_ZERO = {"mgda", "mgda-ub", "pcgrad", "gradvac", "cagrad", "imtl-g", "aligned-mtl", "aligned-mtl-ub",
                 "upgrad", "dualproj", "config", "db-mtl", "gradnorm", "moco", "excess-mtl", "sdmgrad", "modo"}
OPPOSITE_RAISES = {"nash-mtl", "fairgrad"}  # no solution exists: a clear error, never a silent zero


def test_analytic_tables_cover_every_gradient_method():
    assert set(ORTHOGONAL) == set(IDENTICAL) == set(GRADIENT)
    assert OPPOSITE_ZERO | OPPOSITE_RAISES | {"graddrop"} == set(GRADIENT)


@pytest.mark.parametrize("name", GRADIENT)
def test_analytic_orthogonal_identical_opposite(name):
    tol = 1e-4 if name in ("upgrad", "dualproj") else 1e-7  # torchjd regularises its QP (reg_eps 1e-4)
    assert aggregate(name, E).tolist() == pytest.approx(ORTHOGONAL[name], abs=tol)
    same = torch.cat([G, G])
    assert aggregate(name, same).tolist() == pytest.approx((IDENTICAL[name] * G[0]).tolist(), abs=tol)
    opposite = torch.cat([G, -G])
    if name in OPPOSITE_RAISES:
        with pytest.raises(NoSolutionError, match="no solution"):
            aggregate(name, opposite)
    elif name in OPPOSITE_ZERO:
        assert aggregate(name, opposite).abs().max() < tol
    else:  # graddrop: each coordinate keeps one task's sign at random
        d = aggregate(name, opposite)
        assert all(abs(v) == pytest.approx(abs(c)) for v, c in zip(d.tolist(), G[0].tolist()))


def test_zero_task_gradient_is_an_error_for_bargaining_methods():
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    for name in OPPOSITE_RAISES:
        with pytest.raises(NoSolutionError, match="zero gradient"):
            aggregate(name, g)


# ------------------------------------------------------------------ comparisons with torchjd

def test_against_torchjd_on_random_matrices():
    from torchjd import aggregation as tjd

    for k, g in enumerate(conflicting_matrices(8)):
        t = g.shape[0]
        pairs = {
            "imtl-g": (aggregate("imtl-g", g), tjd.IMTLG()(g), 1e-8),
            "aligned-mtl": (aggregate("aligned-mtl", g), t * tjd.AlignedMTL()(g), 1e-8),  # LibMTL sums, torchjd averages
            "cagrad": (aggregate("cagrad", g, rescale=0), tjd.CAGrad(c=0.5)(g), 1e-4),
            "fairgrad": (aggregate("fairgrad", g), tjd.FairGrad(alpha=1.0)(g), 1e-4),
            "config": (aggregate("config", g), tjd.ConFIG()(g), 1e-10),
        }
        if t == 2:  # torchjd's PCGrad keeps a fixed order
            pairs["pcgrad"] = (aggregate("pcgrad", g), tjd.PCGrad()(g), 1e-10)
        for name, (ours, theirs, tol) in pairs.items():
            assert torch.allclose(ours, theirs, rtol=tol, atol=tol * theirs.norm()), (name, k)
        # torchjd's MGDA is Frank-Wolfe (approximate): ours is at least as short and close to it
        ours, theirs = aggregate("mgda", g), tjd.MGDA(epsilon=1e-12, max_iters=10_000)(g)
        assert ours.norm() <= theirs.norm() + 1e-12 and torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * ours.norm())


def test_nash_mtl_matches_the_reference_solver_within_its_tolerance():
    from torchjd.aggregation import NashMTL

    for g in conflicting_matrices(6):
        ours = aggregate("nash-mtl", g, max_norm=0.0)
        theirs = NashMTL(n_tasks=g.shape[0], max_norm=0.0)(g)  # cvxpy, stops at residual 1e-3
        assert torch.allclose(ours, theirs, rtol=2e-2, atol=2e-2 * ours.norm())


def test_graddrop_and_gradvac_match_torchjd_given_the_same_random_stream():
    from torchjd.aggregation import GradDrop, GradVac

    for seed, g in enumerate(conflicting_matrices(4)):
        torch.manual_seed(seed)
        assert torch.allclose(aggregate("graddrop", g, seed=seed), GradDrop()(g), rtol=0, atol=1e-12)
        ours, theirs = make("gradvac", g.shape[0]), GradVac()
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        for _ in range(3):  # stateful: the moving targets must agree step after step
            step = StepInfo(step=0, epoch=0, steps_per_epoch=1, total_steps=1, generator=gen, layer_sizes=(g.shape[1],))
            assert torch.allclose(ours.aggregate(g, torch.ones(g.shape[0], dtype=g.dtype), step), theirs(g), atol=1e-10)


# ------------------------------------------------------------------ loss weighting

def test_weighting_methods_return_positive_finite_weights():
    losses = torch.tensor([0.3, 1.2, 2.5], dtype=torch.float64)
    for name in WEIGHTING:
        m = make(name, 3)
        w = m.weights(losses, info())
        assert w.shape == (3,) and torch.isfinite(w).all() and (w > 0).all(), name
        assert torch.isfinite(m.loss(losses.clone().requires_grad_(), info())), name


def test_weighting_gradients_match_their_declared_weights():
    for name in WEIGHTING:
        m = make(name, 3)
        losses = torch.tensor([0.3, 1.2, 2.5], dtype=torch.float64, requires_grad=True)
        w = m.weights(losses.detach(), info(seed=3))
        (grad,) = torch.autograd.grad(m.loss(losses, info(seed=3)), losses)
        assert torch.allclose(grad, w, rtol=1e-6), name


def test_loss_weightings_match_torchjd_scalarizers():
    from torchjd import scalarization as tjd

    losses = torch.tensor([0.3, 1.2, 2.5], dtype=torch.float64)
    for name, theirs, attr, their_attr in (("uw", tjd.UW(3), "log_var", "log_var"),
                                           ("imtl-l", tjd.IMTLL(3), "scale", "log_scale"),
                                           ("gls", tjd.GeometricMean(), None, None)):
        ours = make(name, 3)
        theirs = theirs.double()
        if attr:  # the same parameter values (torchjd starts UW at 0, LibMTL at -0.5)
            with torch.no_grad():
                getattr(theirs, their_attr).copy_(torch.tensor([-0.5, 0.1, 0.7]))
                getattr(ours, attr).copy_(torch.tensor([-0.5, 0.1, 0.7]))
        a, b = losses.clone().requires_grad_(), losses.clone().requires_grad_()
        mine, ref = ours.loss(a, info()), theirs(b)
        mine.backward(), ref.backward()
        assert mine.item() == pytest.approx(ref.item(), rel=1e-12), name
        assert torch.allclose(a.grad, b.grad), name
        if attr:
            assert torch.allclose(getattr(ours, attr).grad, getattr(theirs, their_attr).grad), name


def test_fixed_weights_option():
    m = make("fixed", 2, weights=[0.2, 0.8])
    assert m.weights(torch.ones(2), info()).tolist() == pytest.approx([0.2, 0.8])
    assert make("fixed", 3).weights(torch.ones(3), info()).tolist() == [1.0, 1.0, 1.0]
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0], "x"):
        with pytest.raises(ValueError, match="weights"):
            make("fixed", 2, weights=bad)


def test_gls_is_the_geometric_mean():
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    assert make("gls", 3).loss(losses, info()).item() == pytest.approx(4.0 ** (1 / 3))


def test_dwa_uses_the_two_previous_epoch_means():
    m = make("dwa", 2)
    history = {0: [1.0, 1.0], 1: [0.5, 1.0], 2: [9.0, 9.0]}  # epoch 1: task 0 halves, task 1 stays
    for epoch, losses in history.items():
        w = m.weights(torch.tensor(losses, dtype=torch.float64), info(epoch=epoch))
    r = torch.tensor([0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(w, 2 * torch.softmax(r / 2.0, 0))
    assert w[1] > w[0]  # the slower task gets more weight


def test_rlw_draws_from_the_generator():
    m = make("rlw", 4)
    a, b = m.weights(torch.ones(4), info(seed=1)), m.weights(torch.ones(4), info(seed=1))
    assert torch.equal(a, b) and a.sum().item() == pytest.approx(1.0)
    assert not torch.equal(a, m.weights(torch.ones(4), info(seed=2)))


def test_famo_logits_move_toward_the_slower_task():
    m = make("famo", 2)
    before = torch.tensor([1.0, 1.0], dtype=torch.float64)
    m.loss(before.clone().requires_grad_(), info())
    m.after_step(torch.tensor([0.5, 0.99], dtype=torch.float64), info())  # task 0 improved much more
    assert m.logits[1] > m.logits[0]
    assert m.max_norm == 1.0


def test_famo_next_batch_variant_updates_at_the_following_step():
    same, nxt = make("famo", 2), make("famo", 2, update_losses="next_batch")
    assert same.wants_losses_after_step and not nxt.wants_losses_after_step
    first, second = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.99], dtype=torch.float64)
    same.loss(first, info())
    same.after_step(second, info())
    nxt.loss(first, info())
    assert torch.equal(nxt.logits, torch.zeros(2, dtype=torch.float64))  # nothing to update yet
    nxt.loss(second, info())  # the update from (first, second), then second's loss
    assert torch.equal(nxt.logits, same.logits)
    with pytest.raises(ValueError, match="update_losses"):
        make("famo", 2, update_losses="later")


def test_uw_and_imtl_l_learn_their_parameters():
    for name, attr in (("uw", "log_var"), ("imtl-l", "scale")):
        m = make(name, 2)
        losses = torch.tensor([0.1, 3.0], dtype=torch.float64)
        m.loss(losses, info()).backward()
        grad = getattr(m, attr).grad
        assert grad is not None and grad[0] != grad[1], name


# ------------------------------------------------------------------ state

STATEFUL = ["dwa", "famo", "famo-next", "db-mtl", "gradvac", "moco", "nash-mtl", "gradnorm", "uw", "imtl-l", "go4align"]


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_continues_identically(name):
    g_seq = [g[:3, :7] for g in random_matrices(40, seed=5) if g.shape[0] >= 3 and g.shape[1] >= 7][:5]
    losses = torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64)

    def run(m, k, epoch):
        step = info(seed=k, epoch=epoch, layer_sizes=(7,))
        if m.kind == "gradient":
            return m.aggregate(g_seq[k], losses * (k + 1), step)
        out = m.loss((losses * (k + 1)).requires_grad_(), step).detach()
        if m.wants_losses_after_step:
            m.after_step(losses * k, step)
        return out

    options = {"update_losses": "next_batch"} if name == "famo-next" else {}
    name = name.removesuffix("-next")
    a = make(name, 3, **options)
    for k in range(3):
        run(a, k, epoch=k)
    b = make(name, 3, **options)
    b.load_state_dict(a.state_dict())
    assert torch.equal(run(a, 3, epoch=3), run(b, 3, epoch=3))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_every_method_documents_paper_reference_and_options():
    for name, cls in METHODS.items():
        assert cls.citation and cls.description, name
        if cls.kind != "single_task":
            assert cls.reference, name
            assert "Reference matched" in (sys.modules[cls.__module__].__doc__ or ""), name
