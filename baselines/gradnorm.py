"""GradNorm: learn task weights so that the weighted task gradients have norms proportional
to each task's relative inverse training rate.

Weights w = T softmax(s) (s trained by the cell's optimiser). With G_i = ||w_i g_i||, the
relative loss L~_i = L_i / L_i(0), r_i = L~_i / mean(L~) and the target G_mean r_i^alpha
(detached), s receives the gradient of sum_i |G_i - target_i|; the shared update is
sum_i w_i g_i with w detached.

Paper: Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks, ICML 2018. Reference matched: LibMTL
``weighting/GradNorm.py``: alpha = 1.5, g_i over all shared parameters (the paper uses the last
shared layer), weights T softmax(s) (sum T), L_i(0) = the task's mean training loss over the
first epoch, during which the update is the plain sum of gradients (EW).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlbench.api import GradientAggregator, StepInfo


class GradNorm(GradientAggregator):
    name = "gradnorm"
    first_epoch_steps: Tensor
    first_epoch_sum: Tensor
    description = "GradNorm: weights that balance gradient norms by training rate"
    citation = "Chen et al., GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks, ICML 2018"
    reference = "LibMTL weighting/GradNorm.py (alpha 1.5, all shared parameters, EW during epoch 0)"

    def __init__(self, n_tasks: int, alpha: float = 1.5) -> None:
        super().__init__(n_tasks)
        self.alpha = alpha
        self.scale = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("first_epoch_sum", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("first_epoch_steps", torch.zeros((), dtype=torch.long))

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if info.epoch == 0:
            self.first_epoch_sum += losses.detach().to(self.first_epoch_sum)
            self.first_epoch_steps += 1
            return grads.sum(dim=0)
        if int(self.first_epoch_steps) == 0:
            raise RuntimeError("gradnorm: no first-epoch losses recorded (the run must start at epoch 0)")
        weights = len(losses) * torch.softmax(self.scale, dim=0)
        norms = weights * grads.detach().norm(dim=1).to(weights)  # ||w_i g_i||, differentiable in w only
        initial = (self.first_epoch_sum / self.first_epoch_steps).to(norms)
        relative = losses.detach().to(norms) / initial
        target = (norms.mean() * (relative / relative.mean()) ** self.alpha).detach()
        (self.scale.grad,) = torch.autograd.grad((norms - target).abs().sum(), self.scale)
        return weights.detach().to(grads.dtype) @ grads
