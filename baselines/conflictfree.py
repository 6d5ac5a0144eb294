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
reference); if the direction vanishes the update is zero: when ||pinv(U) 1||^2 is below 1e-9 T
(its value is T for orthonormal gradients), e.g. exactly opposite gradients or a rank-1 matrix
with balanced signs, where rounding would otherwise leave a direction of noise (version 1
returned an update of norm ~1e-3 there, growing with the gradients' scale).
Guarantee: the update has the same cosine with every task gradient, positive (so it never
conflicts) when the task gradients are linearly independent; with dependent gradients pinv(U) 1
is a least-squares direction and may conflict.

Version 2: the vanishing-direction rule above; float64 Gram matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, StepInfo
from mtlbench.plugin.solvers import gram_pinv

VANISHING = 1e-9  # ||pinv(U) 1||^2 / T below which the direction is taken as zero


class ConFIG(GramWeighting):
    name = "config"
    version = "2"
    properties = frozenset({"non_conflicting_if_independent", "permutation_invariant", "linear_under_scaling"})
    description = "ConFIG: the direction with equal cosine to every task gradient"
    citation = "Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks, ICLR 2025"
    reference = "torchjd 0.18 aggregation.ConFIG (port of the authors' conflictfree package), via the Gram matrix"

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        inv_norms = torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms))
        unit_gram = gram * torch.outer(inv_norms, inv_norms)
        unit_a = gram_pinv(unit_gram, self.grad_dtype) @ torch.ones_like(norms)  # direction on the u_i
        if unit_a @ unit_gram @ unit_a <= VANISHING * len(norms):
            return torch.zeros_like(norms)
        a = inv_norms * unit_a  # the same direction on the raw g_i
        sq_norm = a @ gram @ a  # ||direction||^2
        return (gram @ a).sum() / sq_norm * a
