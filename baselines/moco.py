"""MoCo: multi-objective gradient correction. Track each task gradient with a moving average
y_i (the correction that makes the stochastic MGDA direction asymptotically unbiased) and move
the task weights lambda by a projected gradient step on the min-norm objective:
y <- y - beta_t (y - g), lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda), update
Y^T lambda, with beta_t = beta / t^beta_sigma and gamma_t = gamma / t^gamma_sigma.

Paper: Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach, ICLR 2023. Reference matched: LibMTL
``weighting/MoCo.py``: beta = 0.5, beta_sigma = 0.5, gamma = 0.1, gamma_sigma = 0.5, rho = 0,
each task gradient first rescaled to norm L_i (g_i / (||g_i|| + 1e-8) * L_i, LibMTL's practical
choice), lambda initialised to 1/T and kept on the simplex with a softmax (LibMTL's stand-in for
the paper's simplex projection). y (T x P) and lambda are buffers, saved with the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo


class MoCo(GradientAggregator):
    name = "moco"
    lambd: Tensor
    step: Tensor
    tracked: Tensor
    description = "MoCo: tracked task gradients and weights on the min-norm objective"
    citation = "Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach, ICLR 2023"
    reference = "LibMTL weighting/MoCo.py (beta 0.5, beta_sigma 0.5, gamma 0.1, gamma_sigma 0.5, rho 0)"

    def __init__(
        self,
        n_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__(n_tasks)
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = beta, beta_sigma, gamma, gamma_sigma, rho
        self.register_buffer("tracked", torch.empty(0))  # y, (T, P), sized at the first step
        self.register_buffer("lambd", torch.full((n_tasks,), 1.0 / n_tasks))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if self.tracked.shape != grads.shape:
            self.tracked = torch.zeros_like(grads)
        self.step += 1
        t = int(self.step)
        step = self.beta / t**self.beta_sigma
        # y <- y - step (y - scaled), scaled_i = g_i / (||g_i|| + 1e-8) * L_i
        coef = (step * losses.to(grads) / (grads.norm(dim=1) + 1e-8)).unsqueeze(1)
        self.tracked.mul_(1 - step).addcmul_(grads, coef)
        y = self.tracked
        lam = self.lambd.to(y)
        gram = y @ y.T + self.rho * torch.eye(len(lam), dtype=y.dtype, device=y.device)
        self.lambd = torch.softmax(lam - (self.gamma / t**self.gamma_sigma) * gram @ lam, dim=0).to(self.lambd)
        return self.lambd.to(y) @ y
