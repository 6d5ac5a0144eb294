"""Nash-MTL: the Nash bargaining solution. Find alpha > 0 with (K alpha)_i = 1 / alpha_i for the
Gram matrix K = G G^T of the task gradients, update sum_i alpha_i g_i, clipped to norm
``max_norm``.

Paper: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, Multi-Task Learning as a
Bargaining Game, ICML 2022. Reference matched: the authors' nash-mtl ``NashMTL`` (also
torchjd's port): the equation on the raw Gram matrix K (the reference divides K by its
Frobenius norm n only to condition its solver and multiplies n back into its constraints,
alpha_i n (K/n alpha)_i >= 1; we likewise solve on K/n and rescale alpha by n^-1/2), update
sum_i alpha_i g_i on the raw gradients, max_norm = 1.0 (the update is clipped; the reference
clips the shared gradient: the same thing),
update_weights_every = 1 (in between, the previous alpha is reused). Difference: the reference
approximates the solution with up to 20 convex-concave steps of an ECOS solve (cvxpy), stopping
when ||K alpha - 1/alpha|| < 1e-3; we solve the same equation with Newton's method to 1e-10
(``mtlbench.plugin.solvers.power_balance_weights``), no solver package needed. Edge cases: when no
solution exists (a zero task gradient, exactly opposite gradients) the step fails with a clear
error instead of returning zero. Clipping: LibMTL clips with the coefficient
max_norm / (norm + 1e-6), we with max_norm / norm (a relative difference of ~1e-6).

Version 2: float64 Gram matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import power_balance_weights


class NashMTL(GramWeighting):
    name = "nash-mtl"
    version = "2"
    properties = frozenset({"non_conflicting", "permutation_invariant", "may_raise_on_dependent"})
    matches = (
        ReferenceMatch("LibMTL", "Nash_MTL", options={"max_norm": "max_norm", "update_weights_every": "update_weights_every"},
                       rtol=2e-4, atol=1e-6, differences={
                           "solver": "LibMTL (as the authors' code) runs up to 20 convex-concave ECOS steps and stops at "
                                     "||K a - 1/a|| < 1e-3; ours is Newton's method to 1e-10",
                           "float32": "LibMTL casts alpha to float32 before the weighted backward"},
                       known_cases={
                           "opposite": "no solution: exactly opposite gradients; we raise NoSolutionError, LibMTL's ECOS "
                                       "receives Inf data and returns erratic values",
                           "identical": "LibMTL's stopping test fires at its starting point alpha = 1 and returns the sum "
                                        "of the gradients; ours is the solution alpha = (1, 1)/sqrt(2 ||g||^2) (the two "
                                        "agree once clipped to norm 1)"}),
    )  # fmt: skip
    alpha: Tensor
    calls: Tensor
    description = "Nash bargaining solution: G G^T alpha = 1/alpha"
    citation = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022"
    reference = "authors' nash-mtl NashMTL (max_norm 1); exact Newton solve instead of cvxpy"

    def __init__(self, n_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1) -> None:
        super().__init__(n_tasks)
        if update_weights_every < 1 or max_norm < 0:
            raise ValueError(f"need update_weights_every >= 1 and max_norm >= 0, got {update_weights_every}, {max_norm}")
        self.clip, self.every = max_norm, update_weights_every
        self.register_buffer("alpha", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if int(self.calls) % self.every == 0:
            norm = gram.norm()
            weights = power_balance_weights(gram / norm, power=1.0) / norm.sqrt()
            self.alpha = weights.to(self.alpha)
        else:
            weights = self.alpha.to(torch.float64)
        self.calls += 1
        return weights  # float64 even when the module was cast: large weights cancel in the combination

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        d = super().aggregate(grads, losses, info)
        norm = d.norm()
        if self.clip > 0 and norm > self.clip:
            d = d * (self.clip / norm)
        return d
