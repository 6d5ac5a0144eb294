"""Aligned-MTL: make the gradient system well conditioned. With the eigendecomposition
K = G G^T = V diag(l) V^T restricted to the eigenvalues above l_max T eps, the balance
transformation B = sqrt(l_min) V diag(l)^(-1/2) V^T turns G into B G, whose rows are orthogonal
with equal norms sqrt(l_min); the update is the sum of its rows, sum_i (B 1)_i g_i.

Paper: Senushkin, Patakin, Kuznetsov & Konushin, Independent Component Alignment for Multi-Task
Learning, CVPR 2023. Reference matched: LibMTL ``weighting/Aligned_MTL.py`` (the authors' code):
a *sum* of the aligned rows (torchjd's AlignedMTL averages: it is T times smaller), rank cut at
l_max T eps, scale sqrt of the smallest kept eigenvalue. ``aligned-mtl-ub`` runs it on the
gradients of the shared representation (the paper's -UB variant, LibMTL rep_grad=True).
Edge case: all-zero gradients give a zero update.

Version 2: float64 Gram matrix (the rank cut still uses the gradients' own machine epsilon).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import gram_matrix


def aligned_weights(gram: Tensor, eps: float) -> Tensor:
    """B 1 for the balance transformation B of the Gram matrix (float64)."""
    k = gram.to(torch.float64)
    eigvals, eigvecs = torch.linalg.eigh(k)
    tol = eigvals.max() * k.shape[0] * eps
    keep = eigvals > tol
    if not bool(keep.any()):
        return torch.zeros(k.shape[0], dtype=torch.float64, device=k.device)
    lam, v = eigvals[keep], eigvecs[:, keep]
    b = lam.min().sqrt() * (v * lam.rsqrt()) @ v.T
    return b.sum(dim=0)


class AlignedMTL(GradientAggregator):
    name = "aligned-mtl"
    version = "2"
    properties = frozenset({"permutation_invariant", "linear_under_scaling"})
    matches: ClassVar[tuple[ReferenceMatch, ...]] = (ReferenceMatch("LibMTL", "Aligned_MTL", rtol=1e-6, atol=1e-9),)
    description = "Aligned-MTL: align the gradient system's principal components, sum"
    citation = "Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023"
    reference = "LibMTL weighting/Aligned_MTL.py (sum of aligned rows; torchjd's is T times smaller)"

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        return aligned_weights(gram_matrix(grads), torch.finfo(grads.dtype).eps).to(grads.dtype) @ grads


class AlignedMTLUB(AlignedMTL):
    name = "aligned-mtl-ub"
    matches = ()
    description = "Aligned-MTL on the gradients of the shared representation"
    reference = "LibMTL weighting/Aligned_MTL.py with rep_grad=True"
    gradients = "representation"
