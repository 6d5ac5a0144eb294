"""DB-MTL: dual-balancing. Balance the losses by taking their logarithm (gradients g_i / L_i),
keep an exponential moving average of those per-task gradients, then rescale every average to
the largest norm among them and sum.

Paper: Lin, Ye, Xu, Shi & Zhang, Dual-Balancing for Multi-Task Learning, arXiv 2308.12029
(2023). Reference matched: LibMTL ``weighting/DB_MTL.py`` with LibMTL's defaults (config.py:
``DB_beta`` 0.9, ``DB_beta_sigma`` 0): gradients of log(L_i + 1e-8), EMA coefficient
beta / step^beta_sigma, the average starting at zero (so the first step uses 0.1 times the
log-gradients), scale alpha_i = max_j ||m_j|| / (||m_i|| + 1e-8), update sum_i alpha_i m_i (a
sum). The (T, P) moving average is a buffer, saved with the method.

Version 2: the default ``beta_sigma`` is LibMTL's 0 (version 1 had 0.5, MoCo's default: the
first step agreed, later steps did not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, ReferenceMatch, StepInfo


class DBMTL(GradientAggregator):
    name = "db-mtl"
    grad_average: Tensor
    step: Tensor
    description = "dual balancing: log losses, then gradients rescaled to the largest norm"
    citation = "Lin et al., Dual-Balancing for Multi-Task Learning, arXiv 2308.12029, 2023"
    reference = "LibMTL weighting/DB_MTL.py (beta 0.9, beta_sigma 0: LibMTL's defaults)"
    version = "2"
    # not linear under scaling: the reference's 1e-8 in the denominators is absolute
    properties = frozenset({"permutation_invariant"})
    matches = (
        ReferenceMatch("LibMTL", "DB_MTL", options={"beta": "DB_beta", "beta_sigma": "DB_beta_sigma"}, rtol=1e-7, atol=1e-9),
    )

    def __init__(self, n_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__(n_tasks)
        self.beta, self.beta_sigma = beta, beta_sigma
        self.register_buffer("grad_average", torch.empty(0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if self.grad_average.shape != grads.shape:
            self.grad_average = torch.zeros_like(grads)
        self.step += 1
        keep = self.beta / int(self.step) ** self.beta_sigma
        # average <- log_grads + keep (average - log_grads), with log_grads = g_i / (L_i + 1e-8)
        coef = ((1 - keep) / (losses.to(grads) + 1e-8)).unsqueeze(1)
        self.grad_average.mul_(keep).addcmul_(grads, coef)
        norms = self.grad_average.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        return alpha @ self.grad_average
