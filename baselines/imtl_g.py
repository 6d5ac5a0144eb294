"""IMTL-G: the gradient half of Impartial MTL. Find the combination g = sum_i a_i g_i with
sum_i a_i = 1 whose projections onto every unit task gradient are equal (g . u_i = g . u_j).

Paper: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task Learning,
ICLR 2021. Reference matched: the gradient part of LibMTL ``weighting/IMTL.py``
(a = (1 - sum a'', a'') with a'' = g_1 U^T (D U^T)^-1), solved in the equivalent Gram form of
torchjd's ``IMTLG``: v = K^+ ||g||, a = v / sum(v) (weights sum to 1, same scale as LibMTL).
Guarantee: the update has the same projection onto every unit task gradient, and the weights
sum to 1. It is *not* non-conflicting: that common projection can be negative (on the
full-rank G = [[-.2, -1, .6], [-.2, -.4, .5], [-.5, 1.4, .4]] the update conflicts with every
task; torchjd's IMTLG gives the same update). Edge cases (pinned by tests): identical gradients
give that gradient (LibMTL raises: D U^T is singular); exactly opposite gradients give the zero
vector (no non-zero direction has equal projections); if sum(v) = 0 the update is zero, as in
torchjd; so is it when v = K^+ ||g|| vanishes (below 1e-9 ||K^+|| ||n||, e.g. a rank-1 matrix
with balanced signs), where version 1 divided rounding noise by rounding noise.

Version 2: float64 Gram matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import gram_pinv

VANISHING = 1e-9  # ||K^+ n|| below this times ||K^+|| ||n||: the direction vanishes


class IMTLG(GramWeighting):
    name = "imtl-g"
    version = "2"
    properties = frozenset({"permutation_invariant", "linear_under_scaling"})
    matches = (
        ReferenceMatch("LibMTL", "IMTL", rtol=1e-6, atol=1e-9, known_cases={
            "identical": "LibMTL raises on identical gradients (D U^T is singular); we return that gradient",
        }),
    )  # fmt: skip
    description = "IMTL-G: the combination with equal projections on all task gradients"
    citation = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    reference = "LibMTL weighting/IMTL.py gradient part, in torchjd IMTLG's pseudo-inverse form"

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        pinv = gram_pinv(gram, self.grad_dtype)
        norms = gram.diagonal().clamp_min(0).sqrt()
        v = pinv @ norms
        if v.norm() <= VANISHING * pinv.norm() * norms.norm():
            return torch.zeros_like(v)  # no direction has equal projections: v is rounding noise
        total = v.sum()
        if total.abs() < 1e-12 * v.abs().sum().clamp_min(1e-300):
            return torch.zeros_like(v)
        return v / total
