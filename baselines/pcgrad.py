"""PCGrad: project each task gradient onto the normal plane of every task gradient it
conflicts with, in a random task order, then sum.

Paper: Yu, Kumar, Gupta, Levine, Hausman & Finn, Gradient Surgery for Multi-Task Learning,
NeurIPS 2020.

Reference matched: LibMTL ``weighting/PCGrad.py``: for each task i, g_i' starts at g_i and,
for every other task j in a freshly shuffled order, if g_i' . g_j < 0 then
g_i' -= (g_i' . g_j / ||g_j||^2) g_j; the update is sum_i g_i' (a sum, not a mean). The
projection uses the *original* g_j. Differences: LibMTL adds 1e-8 to ||g_j||^2, we instead skip
a zero g_j (it conflicts with nothing); the shuffle uses the method's seeded generator, so runs
are reproducible; inner products are taken from the Gram matrix (equal to the reference's
vector arithmetic up to rounding, O(T^2 P) instead of O(T^3 P)). For T = 2 the order does not matter
and the update has a non-negative inner
product with both task gradients.
"""

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo
from mtlbench.plugin.solvers import gram_matrix


class PCGrad(GradientAggregator):
    name = "pcgrad"
    description = "project conflicting gradients onto each other's normal plane, then sum"
    citation = "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020"
    reference = "LibMTL weighting/PCGrad.py (sum of projected gradients; zero-norm guard instead of +1e-8)"

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        # g_i' is tracked as coefficients on the original gradients (g_i' = sum_k coef[i, k] g_k),
        # so every inner product comes from the Gram matrix: O(T^2 P) once, then O(T^3).
        gram = gram_matrix(grads)
        t = gram.shape[0]
        sq_norms = gram.diagonal()
        coef = torch.eye(t, dtype=gram.dtype, device=gram.device)
        for i in range(t):
            order = torch.randperm(t, generator=info.generator).tolist()
            for j in order:
                if j == i or sq_norms[j] == 0:
                    continue
                dot = coef[i] @ gram[:, j]
                if dot < 0:
                    coef[i, j] -= dot / sq_norms[j]
        return coef.sum(dim=0).to(grads.dtype) @ grads
