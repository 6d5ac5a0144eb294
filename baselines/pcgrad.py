"""PCGrad: project each task gradient onto the normal plane of every task gradient it
conflicts with, in a random task order, then sum.

Paper: Yu, Kumar, Gupta, Levine, Hausman & Finn, Gradient Surgery for Multi-Task Learning,
NeurIPS 2020.

Reference matched: LibMTL ``weighting/PCGrad.py`` (and the authors' code, the same rule): for
each task i, g_i' starts at g_i and, for every task j of a freshly shuffled order of *all* T
tasks (i itself included), if g_i' . g_j < 0 then g_i' -= (g_i' . g_j / ||g_j||^2) g_j; the
update is sum_i g_i' (a sum, not a mean). The projection uses the *original* g_j. Including
j = i matters once g_i' has been projected: it may then conflict with its own original
gradient. Differences: LibMTL adds 1e-8 to ||g_j||^2, we instead skip a zero g_j (it conflicts
with nothing); the shuffle uses the method's seeded generator (LibMTL: Python's ``random``),
so runs are reproducible; inner products are taken from the float64 Gram matrix (equal to the
reference's vector arithmetic up to rounding, O(T^2 P) instead of O(T^3 P)). For T = 2 the
order does not matter and the update has a non-negative inner product with both task gradients.

Version 2: the projection onto g_i itself (j = i) as in the references; float64 Gram matrix.
"""

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo


class PCGrad(GramWeighting):
    name = "pcgrad"
    version = "2"
    description = "project conflicting gradients onto each other's normal plane, then sum"
    citation = "Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020"
    reference = "LibMTL weighting/PCGrad.py (sum of projected gradients; zero-norm guard instead of +1e-8)"
    properties = frozenset({"linear_under_scaling"})
    matches = (
        ReferenceMatch("LibMTL", "PCGrad", rtol=1e-6, atol=1e-7, differences={
            "random-order": "per task a fresh shuffle of all T tasks: ours from the method's generator, LibMTL's from "
                            "Python's random (the test gives both the same orders)",
            "epsilon": "LibMTL adds 1e-8 to ||g_j||^2: a relative change of 1e-8 / ||g_j||^2 (5e-7 for ||g_j||^2 = 0.02)",
        }),
    )  # fmt: skip

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        # g_i' is tracked as coefficients on the original gradients (g_i' = sum_k coef[i, k] g_k),
        # so every inner product comes from the Gram matrix: O(T^2 P) once, then O(T^3).
        t = gram.shape[0]
        sq_norms = gram.diagonal()
        coef = torch.eye(t, dtype=gram.dtype, device=gram.device)
        for i in range(t):
            order = torch.randperm(t, generator=info.generator).tolist()
            for j in order:
                if sq_norms[j] == 0:
                    continue
                dot = coef[i] @ gram[:, j]
                if dot < 0:
                    coef[i, j] -= dot / sq_norms[j]
        return coef.sum(dim=0)
