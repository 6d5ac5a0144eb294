"""CAGrad: conflict-averse gradient descent. Maximise the worst task's improvement within a
ball around the mean gradient g_0: with w* = argmin over the simplex of
g_w . g_0 + c ||g_0|| ||g_w|| (g_w = sum_i w_i g_i), the update is
d = g_0 + (c ||g_0|| / ||g_w*||) g_w*, divided by (1 + c^2) (``rescale = 1``).

Paper: Liu, Liu, Jin, Stone & Liu, Conflict-Averse Gradient Descent for Multi-task Learning,
NeurIPS 2021. Reference matched: LibMTL ``weighting/CAGrad.py``: the *mean* gradient g_0
(nash-mtl's CAGrad sums and is T times larger), c = 0.5 (nash-mtl uses 0.4), ``rescale`` 0
(none), 1 (/(1 + c^2), the default) or 2 (/(1 + c)). Differences: the inner problem is solved
to ~1e-12 (SLSQP on analytic gradients, see ``mtlbench.plugin.solvers.cagrad_weights``) where the
reference's SLSQP with default tolerances stops ~1e-3 away (the objective is flat near its
optimum: objective values agree to ~1e-12, updates to ~1e-6 relative); LibMTL adds 1e-8 to g_0's and g_w's
norms, we do not. Edge case: if g_w* = 0 (zero lies in the gradients' convex hull, e.g. a zero
task gradient) the update is g_0 / (1 + c^2), as in the reference; since the inner solve is
exact to ~1e-6 only, ||g_w*|| below 1e-6 times the largest gradient norm counts as zero (version
1 let the noise of such a g_w* pick the direction, so a task order or a scale changed the update).
torchjd's CAGrad equals ``rescale = 0``.

Guarantee, and its limit: for c < 1 the update improves the worst task within the ball around
g_0, but it is not non-conflicting in general; with c >= 1 and a zero task gradient the update
can conflict with another task (the reference's formula does the same: the ball then reaches
past the origin), so c >= 1 is a choice to make knowingly.

Version 2: float64 Gram matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import cagrad_weights

HULL_ZERO = 1e-6  # ||g_w*|| below this times the largest gradient norm counts as zero


class CAGrad(GramWeighting):
    name = "cagrad"
    version = "2"
    properties = frozenset({"permutation_invariant", "linear_under_scaling"})
    matches = (
        ReferenceMatch("LibMTL", "CAGrad", options={"c": "calpha", "rescale": "rescale"}, rtol=1e-3, atol=1e-5,
                       differences={"solver": "LibMTL's SLSQP stops ~1e-4 (relative) from the optimum of the inner "
                                              "problem, and adds 1e-8 to the norms; ours is solved to ~1e-12"}),
    )  # fmt: skip
    description = "conflict-averse gradient: best worst-case improvement near the mean gradient"
    citation = "Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021"
    reference = "LibMTL weighting/CAGrad.py (mean gradient, c 0.5, rescale 1; exact inner solve)"

    def __init__(self, n_tasks: int, c: float = 0.5, rescale: int = 1) -> None:
        super().__init__(n_tasks)
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale}")
        self.c, self.rescale = c, rescale

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        t = gram.shape[0]
        w = cagrad_weights(gram, self.c)
        mean = torch.full((t,), 1.0 / t, dtype=gram.dtype, device=gram.device)
        g0_norm = (mean @ gram @ mean).clamp_min(0).sqrt()
        gw_norm = (w @ gram @ w).clamp_min(0).sqrt()
        # g_w* ~ 0: zero lies in the hull and the direction of g_w* is rounding noise of the solve
        # (weights exact to ~1e-6), so it is taken as zero, as the exact solution has it
        tiny = HULL_ZERO * gram.diagonal().max().clamp_min(0).sqrt()
        lam = 0.0 if gw_norm <= tiny else self.c * g0_norm / gw_norm
        return (mean + lam * w) / (1.0, 1 + self.c**2, 1 + self.c)[self.rescale]  # d = g_0 + lam g_w
