"""MGDA: the minimum-norm point of the convex hull of the task gradients.

Paper: Désidéri, Multiple-gradient descent algorithm (MGDA) for multiobjective optimization,
Comptes Rendus Mathematique 2012; applied to deep MTL by Sener & Koltun, Multi-Task Learning
as Multi-Objective Optimization, NeurIPS 2018.

Reference matched: LibMTL ``weighting/MGDA.py`` (itself Sener & Koltun's ``MinNormSolver``):
the update is ``sum_i a_i g_i`` with ``a`` on the simplex (a convex combination, not scaled by
T; nash-mtl's MGDA is T times larger) and the same gradient normalisation options
(``none`` by default, ``l2``, ``loss``, ``loss+``). Normalisation only changes the weights:
like the reference, the returned update combines the *unnormalised* gradients.

MGDA-UB (``mgda-ub``, the paper's "upper bound" variant) runs the same solver on the gradients
of the shared *representation* (the trunk's output over the batch) instead of the shared
parameters, then back-propagates the combination through the trunk: one backward pass instead
of T (LibMTL's ``rep_grad=True``).

Solver: instead of the reference's Frank-Wolfe loop (stops ~1e-3 from the optimum) we solve
min_a a^T K a over the simplex (K = G G^T, float64) in closed form for T = 2 and with Wolfe's
exact minimum-norm-point algorithm otherwise, so the output is the min-norm point to numerical
precision. Edge cases: identical gradients -> that gradient; exactly opposite gradients of
equal norm -> the zero vector (the true min-norm point: MGDA stops at Pareto-stationary points).
"""

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, StepInfo
from mtlbench.plugin.solvers import gram_matrix, min_norm_weights


class MGDA(GradientAggregator):
    name = "mgda"
    description = "min-norm convex combination of task gradients (MGDA)"
    citation = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018"
    reference = "LibMTL weighting/MGDA.py (convex combination; exact solver instead of Frank-Wolfe)"

    NORMALISATIONS = ("none", "l2", "loss", "loss+")

    def __init__(self, n_tasks: int, normalization: str = "none") -> None:
        super().__init__(n_tasks)
        if normalization not in self.NORMALISATIONS:
            raise ValueError(f"mgda: normalization={normalization!r}; valid: {', '.join(self.NORMALISATIONS)}")
        self.normalization = normalization

    def weights(self, grads: Tensor, losses: Tensor) -> Tensor:
        gram = gram_matrix(grads)
        norms = gram.diagonal().clamp_min(0).sqrt()
        if self.normalization == "l2":
            scale = norms
        elif self.normalization == "loss":
            scale = losses.to(gram)
        elif self.normalization == "loss+":
            scale = losses.to(gram) * norms
        else:
            scale = torch.ones_like(norms)
        scale = scale.clamp_min(1e-12)
        return min_norm_weights(gram / torch.outer(scale, scale))  # Gram of the normalised gradients

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        a = self.weights(grads, losses)
        return a.to(grads.dtype) @ grads


class MGDAUB(MGDA):
    name = "mgda-ub"
    description = "MGDA on the gradients of the shared representation (MGDA-UB)"
    reference = "LibMTL weighting/MGDA.py with rep_grad=True (convex combination; exact solver)"
    gradients = "representation"
