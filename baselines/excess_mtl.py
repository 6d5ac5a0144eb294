"""ExcessMTL: robust MTL by excess risks. Each task's excess risk is estimated from its gradient
with an AdaGrad-style preconditioner, w_i = g_i . (g_i / sqrt(sum_steps g_i^2 + 1e-7)), relative
to its value at the first step; the task weights follow a multiplicative (exponentiated
gradient) update lambda_i <- lambda_i exp(eta w_i), renormalised to sum to T, and the update
minimises sum_i lambda_i L_i.

Paper: He, Zhou, Lin, Chen, Zhang, Zhang & Wang (He et al.), Robust Multi-Task Learning with
Excess Risks, ICML 2024. Reference matched: LibMTL ``weighting/ExcessMTL.py`` (modified from the
authors' code): ``robust_step_size`` eta = 1e-2 (LibMTL's default), lambda = 1 at the start and
kept at 1 on the first step (which only records the initial w), squared gradients accumulated
over all steps. The weighted loss reaches the heads too: each head gets lambda_i times its task's
gradient, as in the reference's backward of sum_i lambda_i L_i. The accumulated squared gradients
(T, P), the initial w and lambda are buffers, saved with the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo


class ExcessMTL(GradientAggregator):
    name = "excess-mtl"
    grad_sq_sum: Tensor
    initial: Tensor
    lambdas: Tensor
    description = "excess-risk weighting: multiplicative weights from preconditioned gradient norms"
    citation = "He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024"
    reference = "LibMTL weighting/ExcessMTL.py (robust_step_size 1e-2; from the authors' code)"
    properties = frozenset({"permutation_invariant"})

    def __init__(self, n_tasks: int, robust_step_size: float = 1e-2) -> None:
        super().__init__(n_tasks)
        if robust_step_size < 0:
            raise ValueError(f"excess-mtl: robust_step_size must be >= 0, got {robust_step_size}")
        self.step_size = float(robust_step_size)
        self.register_buffer("grad_sq_sum", torch.empty(0))  # (T, P), sized at the first step
        self.register_buffer("initial", torch.empty(0))  # w of the first step
        self.register_buffer("lambdas", torch.ones(n_tasks, dtype=torch.float64))

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if self.grad_sq_sum.shape != grads.shape:
            self.grad_sq_sum = torch.zeros_like(grads)
        self.grad_sq_sum.addcmul_(grads, grads)
        w = ((grads * grads) / (self.grad_sq_sum + 1e-7).sqrt()).sum(dim=1).to(torch.float64)
        if self.initial.numel() == 0:
            self.initial = w.clone()
        else:
            lam = self.lambdas * torch.exp(self.step_size * w / self.initial)
            self.lambdas = lam / lam.sum() * len(lam)
        return self.lambdas.to(grads.dtype) @ grads

    def head_weights(self) -> Tensor:
        return self.lambdas
