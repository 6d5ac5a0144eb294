"""ConFIG: conflict-free updates. Take the unit task gradients u_i, find the unit direction
whose cosine with every u_i is equal (pinv(U) 1, normalised), and scale it by the sum of the
task gradients' projections onto it: the update has the same positive cosine with every task.

Paper: Liu, Chu, Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks, ICLR 2025 (arXiv 2408.11104). Reference matched: torchjd 0.18 ``aggregation.ConFIG``
(adapted by torchjd from the authors' ``conflictfree`` package): equal preference weights of
1, direction pinv(U) 1, length sum_i g_i . d (a sum: T times a mean-scaled method). Difference:
the pseudo-inverse is taken through the Gram matrix, pinv(U) = U^T pinv(U U^T), which costs
O(T^2 P) instead of an SVD of the (T, P) matrix (tests check equality with torchjd). Edge
cases: a zero task gradient has a zero unit vector (left out of the direction, as in the
reference); if the direction vanishes (exactly opposite gradients) the update is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo
from mtlbench.plugin.solvers import gram_matrix


class ConFIG(GradientAggregator):
    name = "config"
    description = "ConFIG: the direction with equal cosine to every task gradient"
    citation = "Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks, ICLR 2025"
    reference = "torchjd 0.18 aggregation.ConFIG (port of the authors' conflictfree package), via the Gram matrix"

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        gram = gram_matrix(grads)
        norms = gram.diagonal().clamp_min(0).sqrt()
        inv_norms = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms))
        unit_gram = gram * torch.outer(inv_norms, inv_norms)
        a = inv_norms * (torch.linalg.pinv(unit_gram, hermitian=True) @ torch.ones_like(norms))  # on raw g_i
        sq_norm = a @ gram @ a  # ||direction||^2
        if sq_norm <= 0:
            return torch.zeros_like(grads[0])
        return ((gram @ a).sum() / sq_norm * a).to(grads.dtype) @ grads
