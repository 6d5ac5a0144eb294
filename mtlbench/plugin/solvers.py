"""Small exact solvers shared by the reference methods in ``baselines/`` (float64, on Gram
matrices K = G G^T, so their cost does not depend on the number of parameters)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.core.errors import MissingDependencyError

TORCHJD_SOLVERS = "torchjd[quadprog-projector]==0.18.0"


def min_norm_weights(gram: Tensor, tol: float = 1e-12, max_iter: int = 1000) -> Tensor:
    """argmin over the simplex of a^T K a for a PSD (T, T) Gram matrix K.

    Wolfe's minimum-norm-point algorithm (Wolfe, Math. Programming 11, 1976) run on the Gram
    matrix in float64: exact up to rounding, finite, and cheap for the T of MTL (T <= ~40)."""
    k = gram.to(torch.float64)
    t = k.shape[0]
    if t == 1:
        return torch.ones(1, dtype=torch.float64, device=k.device)
    if t == 2:  # closed form
        g11, g12, g22 = k[0, 0], k[0, 1], k[1, 1]
        denom = g11 - 2 * g12 + g22
        a = torch.tensor(0.5, dtype=k.dtype, device=k.device) if denom <= 0 else torch.clamp((g22 - g12) / denom, 0, 1)
        return torch.stack([a, 1 - a])
    # the argmin is scale-free: solve on K / max diag, so that the KKT systems below mix entries
    # of one scale (unnormalised, a Gram matrix of gradients ~1e3 made lstsq drop the simplex
    # constraint as noise and return zero weights)
    k = k / k.diagonal().max().clamp_min(1e-300)
    scale = 1.0
    start = int(torch.argmin(k.diagonal()))
    active = [start]
    lam = torch.ones(1, dtype=torch.float64, device=k.device)
    for _ in range(max_iter):
        x_dot = lam @ k[active]  # x . g_i for every i, where x = sum_active lam_j g_j
        x_sq = float(lam @ x_dot[active])
        j = int(torch.argmin(x_dot))
        if x_sq - float(x_dot[j]) <= tol * scale or j in active:
            break  # optimal: no point lies beyond the supporting hyperplane of x
        active.append(j)
        lam = torch.cat([lam, lam.new_zeros(1)])
        while True:  # minor cycle: move to the affine min-norm point of the active set
            n = len(active)
            system = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=k.device)
            system[:n, :n] = k[active][:, active]
            system[:n, n] = 1
            system[n, :n] = 1
            rhs = torch.zeros(n + 1, dtype=torch.float64, device=k.device)
            rhs[n] = 1
            mu = torch.linalg.lstsq(system, rhs.unsqueeze(1)).solution.squeeze(1)[:n]
            if bool((mu > 1e-15).all()):
                lam = mu
                break
            neg = mu <= 1e-15
            ratios = lam[neg] / (lam[neg] - mu[neg])
            theta = float(ratios.min()) if ratios.numel() else 1.0
            lam = lam + theta * (mu - lam)
            keep = lam > 1e-15
            active = [a for a, kp in zip(active, keep.tolist()) if kp]
            lam = lam[keep]
            lam = lam / lam.sum()
    weights = torch.zeros(t, dtype=torch.float64, device=k.device)
    weights[active] = lam
    return weights


GRAM_CHUNK = 1 << 22  # entries of the (T, P) matrix cast to float64 at a time (32 MB)


def project_to_simplex(v: Tensor) -> Tensor:
    """The Euclidean projection of ``v`` (T,) onto the probability simplex {w >= 0, sum w = 1}
    (the sort-based rule: shift by the threshold that makes the positive part sum to 1)."""
    if not torch.isfinite(v).all():
        raise NoSolutionError(f"simplex projection of a non-finite vector {v.tolist()}")
    u = torch.sort(v, descending=True).values
    cumulative = torch.cumsum(u, 0) - 1.0
    ks = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    keep = u - cumulative / ks > 0
    keep[0] = True  # always true in exact arithmetic (u_1 - (u_1 - 1) = 1); rounding loses it beyond ~2^53
    rho = int(torch.nonzero(keep).max())
    w = torch.clamp(v - cumulative[rho] / (rho + 1), min=0.0)
    if not w.sum() > 0:  # the 1 was lost to rounding (|v| beyond ~2^53): the largest entry takes it all
        w = torch.zeros_like(v)
        w[int(torch.argmax(v))] = 1.0
    return w


def gram_matrix(grads: Tensor) -> Tensor:
    """K = G G^T in float64, accumulated over column blocks so that no float64 copy of the whole
    (T, P) matrix is made (P can be tens of millions). Float64 accumulation matters: a float32
    product of nearly dependent gradients is not positive semi-definite (eigenvalues of -1e-5
    relative were seen for T = 10, rank 2), which breaks the solvers that read K (MGDA's
    min-norm problem ran to its iteration cap)."""
    if grads.dtype == torch.float64:
        return grads @ grads.T
    t, p = grads.shape
    step = max(1, GRAM_CHUNK // max(t, 1))
    gram = torch.zeros(t, t, dtype=torch.float64, device=grads.device)
    for start in range(0, p, step):
        block = grads[:, start : start + step].to(torch.float64)
        gram.addmm_(block, block.T)
    return gram


def gram_pinv(gram: Tensor, source: torch.dtype) -> Tensor:
    """The pseudo-inverse of a float64 Gram matrix K = G G^T of gradients held in ``source``
    precision, with the rank decided at that precision: eigenvalues below T eps(source) times the
    largest are null (torch's own rule, T eps, applied to the data's epsilon instead of float64's).
    A float32 matrix of rank r, once rounded, has T - r eigenvalues of its exact float64 Gram
    matrix at ~eps32^2 of the largest, rounding noise that float64's threshold would invert:
    the result then changes completely when the gradients are scaled (a rank-1 3 x 20 matrix
    times 1e3). For float64 gradients this is exactly ``torch.linalg.pinv(gram, hermitian=True)``."""
    return torch.linalg.pinv(gram, hermitian=True, rtol=gram.shape[0] * torch.finfo(source).eps)


def combine(weights: Tensor, grads: Tensor, gram: Tensor, cancellation: float = 1e3) -> Tensor:
    """sum_i w_i g_i in the gradients' dtype, or accumulated in float64 over column blocks when
    the sum cancels: if sum_i |w_i| ||g_i|| (the norms from the Gram matrix ``gram``, no further
    pass over the gradients) exceeds ``cancellation`` times the result's norm, a float32 sum has
    lost that factor of its precision (weights of ~1e7 on nearly dependent float32 gradients left
    Nash-MTL's update conflicting with a task, cosine -0.44). Ordinary weightings cancel far less
    and keep the plain product (the same numbers as before)."""
    out = weights.to(grads.dtype) @ grads
    if grads.dtype == torch.float64:
        return out
    w = weights.to(torch.float64)
    spread = float((w.abs() * gram.diagonal().clamp_min(0).sqrt()).sum())
    if spread <= cancellation * float(out.norm()):
        return out
    step = max(1, GRAM_CHUNK // max(grads.shape[0], 1))
    for start in range(0, grads.shape[1], step):
        out[start : start + step] = (w @ grads[:, start : start + step].to(torch.float64)).to(grads.dtype)
    return out


class NoSolutionError(ValueError):
    """A method's defining equation has no solution for this gradient matrix."""


def power_balance_weights(
    gram: Tensor, power: float = 1.0, tol: float = 1e-10, accept: float = 1e-6, max_iter: int = 100
) -> Tensor:
    """The w > 0 with (K w)_i = w_i^(-power) for every task i (K = G G^T).

    Nash-MTL's bargaining solution is ``power = 1`` (K alpha = 1/alpha); FairGrad's alpha-fair
    allocation is ``power = 1/alpha``. The solution minimises the strictly convex
    f(w) = w^T K w / 2 - sum_i h(w_i) with h'(w) = w^-power, so damped Newton's method finds it
    to ``tol`` (relative residual) in a few steps; if float64 cannot get there (nearly dependent
    gradients, cosines within ~1e-7 of -1) a residual below ``accept`` is taken. When f is unbounded below there is no
    solution (a zero gradient, or linearly dependent gradients such as exactly opposite ones):
    that raises :class:`NoSolutionError` rather than returning an arbitrary vector.
    """
    k = gram.to(torch.float64)
    diag = k.diagonal()
    if bool((diag <= 0).any()):
        raise NoSolutionError(
            f"task(s) {torch.nonzero(diag <= 0).flatten().tolist()} have a zero gradient: K w = w^-p has no solution"
        )
    try:
        return _power_balance(k, power, tol, accept, max_iter)
    except torch.linalg.LinAlgError:
        # the Newton system is singular in float64 at this scale (gradients of ~1e10): solve the
        # scale-free problem K / s and rescale, w = w' s^(-1 / (1 + p)) (exact in exact arithmetic)
        scale = float(diag.mean())
        try:
            return _power_balance(k / scale, power, tol, accept, max_iter) * scale ** (-1.0 / (1.0 + power))
        except torch.linalg.LinAlgError:
            raise NoSolutionError("K w = w^-p: the Newton system is singular (the gradients are too ill-conditioned)") from None


def _power_balance(k: Tensor, power: float, tol: float, accept: float, max_iter: int) -> Tensor:
    """Damped Newton's method for :func:`power_balance_weights` on the float64 Gram matrix ``k``."""
    diag = k.diagonal()

    def objective(w: Tensor) -> float:
        h = w.log() if power == 1 else w.pow(1 - power) / (1 - power)
        return float(0.5 * w @ k @ w - h.sum())

    w = diag.pow(-1.0 / (1.0 + power))  # exact when the gradients are orthogonal
    start_norm = float(w.norm())
    for _ in range(max_iter):
        target = w.pow(-power)
        residual = k @ w - target
        if float(residual.norm()) <= tol * float(target.norm()):
            return w
        hessian = k + torch.diag(power * w.pow(-power - 1))
        step = torch.linalg.solve(hessian, residual)
        t = 1.0  # backtracking: stay positive, decrease f (Armijo)
        while bool((w - t * step <= 0).any()):
            t *= 0.5
        f0, slope = objective(w), float(residual @ step)
        while objective(w - t * step) > f0 - 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        w = w - t * step
        if float(w.norm()) > 1e8 * start_norm:
            break
    # accepted only if every equation holds to ``accept`` relative to its own right-hand side, so
    # that every projection g_i . d = (K w)_i keeps the sign of w_i^-p (positive): a norm-wise
    # residual let through divergent solutions of problems that have none at the data's precision
    # (float32 gradients with a non-negative combination at zero: weights of ~1e7 whose updates
    # conflicted with a task, cosine -0.44, and changed with the order of the tasks)
    relative = ((k @ w - w.pow(-power)) / w.pow(-power)).abs().max()
    if float(relative) <= accept:
        return w
    raise NoSolutionError(
        "K w = w^-p has no solution: the task gradients are linearly dependent (e.g. exactly opposite) "
        f"or too ill-conditioned (largest relative residual of an equation {float(relative):.2e})"
    )


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """CAGrad's inner problem: argmin over the simplex of w^T K b + c ||g_0|| sqrt(w^T K w),
    with b = 1/T (so w^T K b = g_w . g_0, g_0 the mean gradient).

    Solved with SLSQP on analytic gradients to ``ftol = 1e-15`` (objective exact to ~1e-12; the
    weights only to ~1e-6, the objective being flat near the optimum) (the references use SLSQP with
    numerical gradients and default tolerances, ~1e-3 from the optimum, or CLARABEL)."""
    import numpy as np
    from scipy.optimize import minimize

    k = gram.detach().to(torch.float64).cpu().numpy()
    t = k.shape[0]
    k = k / max(float(np.trace(k)) / t, 1e-300)  # the argmin is scale-free; ftol is absolute
    b = np.full(t, 1.0 / t)
    kb = k @ b
    phi = c * float(np.sqrt(max(b @ kb, 0.0)))

    def fun(w):
        q = max(float(w @ k @ w), 1e-300)
        return float(w @ kb) + phi * np.sqrt(q), kb + phi * (k @ w) / np.sqrt(q)

    res = minimize(
        fun,
        b.copy(),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * t,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    return torch.from_numpy(w / w.sum()).to(gram.device)


def torchjd_aggregator(class_name: str, method: str, **kwargs: Any) -> Any:
    """``torchjd.aggregation.<class_name>(**kwargs)``, or an error naming the pip command when
    torchjd or the QP solver its projections need (quadprog via qpsolvers) is missing."""
    try:
        from torchjd import aggregation

        return getattr(aggregation, class_name)(**kwargs)
    except ImportError as e:
        raise MissingDependencyError(
            f"method {method!r} needs torchjd and its QP solver ({e}); install them with "
            f'pip install "mtlbench[solvers]" (or pip install "{TORCHJD_SOLVERS}")'
        ) from None
