"""STCH: smooth Tchebycheff scalarisation. After a warm-up that minimises sum_i log L_i and
records the mean losses of its last epoch as the nadir point z, minimise
mu log sum_i exp(log(L_i / z_i) / mu), times T (a smooth maximum of the normalised log-losses:
mu -> 0 is the Tchebycheff scalarisation max_i log(L_i / z_i)).

Paper: Lin, Zhang, Liu, Liu, Zhang, Kwong & Zhang, Smooth Tchebycheff Scalarization for
Multi-Objective Optimization, ICML 2024. Reference matched: LibMTL ``weighting/STCH.py``
(modified from the authors' STCH_MTL code): ``mu`` = 1.0 and ``warmup_epochs`` = 4 (LibMTL's
``STCH_mu`` and ``STCH_warmup_epoch``), 1e-20 inside the logarithms, the nadir point the mean of
the losses over the steps of epoch ``warmup_epochs`` (counted from 0, so the warm-up covers
``warmup_epochs`` + 1 epochs), the log-sum-exp shifted by its largest term, the loss multiplied
by T. With a budget of at most ``warmup_epochs`` + 1 epochs STCH is the warm-up objective
throughout: a cell records it (``phase`` in the method's state). The nadir point and the running
sum are buffers, saved with the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, StepInfo


class STCH(LossWeighting):
    name = "stch"
    loss_sum: Tensor
    count: Tensor
    nadir: Tensor
    description = "smooth Tchebycheff scalarisation of the log-losses, after a log-loss warm-up"
    citation = "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024"
    reference = "LibMTL weighting/STCH.py (mu 1.0, warm-up 4 epochs; from the authors' STCH_MTL)"
    properties = frozenset({"permutation_invariant"})

    def __init__(self, n_tasks: int, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__(n_tasks)
        if mu <= 0 or warmup_epochs < 0:
            raise ValueError(f"stch: need mu > 0 and warmup_epochs >= 0, got mu={mu}, warmup_epochs={warmup_epochs}")
        self.mu, self.warmup_epochs = float(mu), int(warmup_epochs)
        self.register_buffer("loss_sum", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("nadir", torch.empty(0))  # set after the warm-up

    def loss(self, losses: Tensor, info: StepInfo) -> Tensor:
        if info.epoch <= self.warmup_epochs:
            if info.epoch == self.warmup_epochs:  # the nadir point: mean losses of the last warm-up epoch
                self.loss_sum += losses.detach().to(self.loss_sum)
                self.count += 1
            return torch.log(losses + 1e-20).sum()
        if self.nadir.numel() == 0:
            self.nadir = (self.loss_sum / self.count.clamp_min(1)).to(losses)
        terms = torch.log(losses / self.nadir.to(losses) + 1e-20)
        shifted = terms - terms.detach().max()
        return self.mu * torch.log(torch.exp(shifted / self.mu).sum()) * len(losses)

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        """The weights the objective puts on the task losses at this point (its gradient)."""
        x = losses.detach().clone().requires_grad_()
        state = (self.loss_sum.clone(), self.count.clone(), self.nadir.clone())
        (grad,) = torch.autograd.grad(self.loss(x, info), x)
        self.loss_sum, self.count, self.nadir = state  # reading the weights changes no state
        return grad
