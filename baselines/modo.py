"""MoDo: multi-objective gradient with double sampling. Three independent batches per step: the
task weights take one projected gradient step on the simplex with an unbiased estimate of
G G^T lambda from two batches, lambda <- Proj(lambda - gamma (G_0 G_1^T lambda + rho lambda)),
and the update combines the third batch's gradients, d = lambda^T G_2.

Paper: Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning:
Optimization, Generalization and Conflict-Avoidance, NeurIPS 2023. Reference matched: LibMTL
``weighting/MoDo.py`` (modified from the authors' heshandevaka/Trade-Off-MOL): lambda starts at
1/T and carries over to the next step (a buffer, saved with the method); Euclidean projection
onto the simplex; defaults gamma = 1e-3 (``MoDo_gamma``), rho = 0.1 (``MoDo_rho``). Each head
receives the mean of its task's gradients over the three batches, as the reference (which
divides the heads' accumulated gradients by 3). Scale convention: the update is in units of one
batch's gradient; lambda's step is not scale-free (gamma multiplies squared gradient norms), as
in the paper. Edge cases: a zero or rank-deficient G only changes lambda's step (nothing is
inverted); T > P is fine. The reference collects gradients in float32; the record test's
tolerance says so.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import MultiSampleAggregator, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import project_to_simplex


class MoDo(MultiSampleAggregator):
    name = "modo"
    lambdas: Tensor
    description = "double-sampling MOO: one projected step on the simplex per step, update from a third batch"
    citation = (
        "Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: Optimization, "
        "Generalization and Conflict-Avoidance, NeurIPS 2023"
    )
    reference = "LibMTL weighting/MoDo.py (from the authors' heshandevaka/Trade-Off-MOL; gamma 1e-3, rho 0.1)"
    head_samples = "mean"
    properties = frozenset({"permutation_invariant"})
    matches = (
        ReferenceMatch(
            source="LibMTL",
            name="MoDo",
            options={"gamma": "MoDo_gamma", "rho": "MoDo_rho"},
            rtol=1e-5,
            differences={"dtype": "the reference collects the per-task gradients in float32"},
        ),
    )

    def __init__(self, n_tasks: int, gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__(n_tasks)
        if gamma < 0 or rho < 0:
            raise ValueError(f"modo: gamma and rho must be >= 0, got gamma={gamma}, rho={rho}")
        self.gamma, self.rho = float(gamma), float(rho)
        self.register_buffer("lambdas", torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64))

    def aggregate_samples(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        g0, g1 = grads[0].double(), grads[1].double()
        lam = self.lambdas.double()
        self.lambdas = project_to_simplex(lam - self.gamma * (g0 @ (g1.T @ lam) + self.rho * lam))
        return self.lambdas.to(grads.dtype) @ grads[2]
