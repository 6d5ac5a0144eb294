"""IMTL-G: the gradient half of Impartial MTL. Find the combination g = sum_i a_i g_i with
sum_i a_i = 1 whose projections onto every unit task gradient are equal (g . u_i = g . u_j).

Paper: Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task Learning,
ICLR 2021. Reference matched: the gradient part of LibMTL ``weighting/IMTL.py``
(a = (1 - sum a'', a'') with a'' = g_1 U^T (D U^T)^-1), solved in the equivalent Gram form of
torchjd's ``IMTLG``: v = K^+ ||g||, a = v / sum(v) (weights sum to 1, same scale as LibMTL).
Edge cases (pinned by tests): identical gradients give that gradient (LibMTL raises: D U^T is
singular); exactly opposite gradients give the zero vector (no non-zero direction has equal
projections); if sum(v) = 0 the update is zero, as in torchjd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo
from mtlbench.plugin.solvers import gram_matrix


class IMTLG(GradientAggregator):
    name = "imtl-g"
    description = "IMTL-G: the combination with equal projections on all task gradients"
    citation = "Liu et al., Towards Impartial Multi-task Learning, ICLR 2021"
    reference = "LibMTL weighting/IMTL.py gradient part, in torchjd IMTLG's pseudo-inverse form"

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        gram = gram_matrix(grads)
        v = torch.linalg.pinv(gram, hermitian=True) @ gram.diagonal().clamp_min(0).sqrt()
        total = v.sum()
        if total.abs() < 1e-12 * v.abs().sum().clamp_min(1e-300):
            return torch.zeros_like(grads[0])
        return (v / total).to(grads.dtype) @ grads
