"""MGDA: the minimum-norm point of the convex hull of the task gradients.

Paper: Désidéri, Multiple-gradient descent algorithm (MGDA) for multiobjective optimization,
Comptes Rendus Mathematique 2012; applied to deep MTL by Sener & Koltun, Multi-Task Learning
as Multi-Objective Optimization, NeurIPS 2018.

Reference matched: LibMTL ``weighting/MGDA.py`` (itself Sener & Koltun's ``MinNormSolver``):
the gradients are first normalised (``normalization``: ``none`` by default, ``l2`` by their
norms, ``loss`` by the losses, ``loss+`` by both, as LibMTL's ``mgda_gn``), the weights ``a``
are the min-norm point of the *normalised* gradients on the simplex, and the update combines
the normalised gradients, ``sum_i a_i g_i / n_i``, as LibMTL does. Scale: a convex
combination (LibMTL's; nash-mtl's MGDA is T times larger). With ``l2`` the update never
conflicts with a task (the min-norm point of the unit gradients has a non-negative inner
product with each); without normalisation neither does the plain min-norm point.

MGDA-UB (``mgda-ub``, the paper's "upper bound" variant) runs the same solver on the gradients
of the shared *representation* (the trunk's output over the batch) instead of the shared
parameters, then back-propagates the combination through the trunk: one backward pass instead
of T (LibMTL's ``rep_grad=True``). As in LibMTL's representation path, its weights come from
the normalised gradients but combine the unnormalised ones.

Solver: instead of the reference's Frank-Wolfe loop (which stops ~1e-3 from the optimum) we
solve min_a a^T K a over the simplex on the float64 Gram matrix (closed form for T = 2, Wolfe's
exact minimum-norm-point algorithm otherwise), so the output is the min-norm point to
numerical precision, also for rank-deficient gradients in float32 (the Gram matrix is
accumulated in float64). Edge cases: identical gradients -> that gradient; exactly opposite
gradients of equal norm, or any gradients with a vanishing convex combination (squared norm
of the min-norm point below T eps64 times the largest squared gradient) -> the zero vector (the
true min-norm point: MGDA stops at Pareto-stationary points); a zero gradient -> the zero vector.

Properties depend on the normalisation (``properties_for``): for MGDA ``none`` and ``loss`` are
linear under scaling of the gradients, ``l2`` and ``loss+`` scale invariant, all non-conflicting;
MGDA-UB guarantees them only without a normalisation (its weights from normalised gradients are
not unique on dependent gradients, and it combines the unnormalised ones).

Version 2: ``l2``/``loss``/``loss+`` combine the normalised gradients (version 1 combined the
unnormalised ones, which could conflict, unlike LibMTL); the Gram matrix is accumulated in
float64.
"""

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import min_norm_weights

# the squared min-norm point, relative to T times the largest squared (normalised) gradient,
# below which it is float64 rounding of zero (a non-negative combination of the gradients
# vanishes: the point is Pareto-stationary); version 2 returned that noise, ~1e-15 ||g||, whose
# sign against a task gradient is arbitrary
STATIONARY = torch.finfo(torch.float64).eps
FRANK_WOLFE = "LibMTL's Frank-Wolfe loop stops ~1e-3 (relative) from the min-norm point; ours is exact"


class MGDA(GramWeighting):
    name = "mgda"
    version = "2"
    description = "min-norm convex combination of task gradients (MGDA)"
    citation = "Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018"
    reference = "LibMTL weighting/MGDA.py (convex combination of the normalised gradients; exact solver)"
    properties = frozenset({"non_conflicting", "permutation_invariant", "linear_under_scaling"})
    matches: ClassVar[tuple[ReferenceMatch, ...]] = (
        ReferenceMatch("LibMTL", "MGDA", options={"normalization": "mgda_gn"}, rtol=1e-4, atol=1e-6,
                       differences={"solver": FRANK_WOLFE}),
    )  # fmt: skip
    NORMALISATIONS = ("none", "l2", "loss", "loss+")

    @classmethod
    def properties_for(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """Combining the normalised gradients (MGDA): ``l2`` and ``loss+`` divide each gradient
        by its norm, so scaling every gradient by c leaves the update unchanged (scale invariant,
        not linear); ``none`` and ``loss`` (the losses do not scale with the gradients) are linear.
        Combining the unnormalised gradients with weights from the normalised ones (MGDA-UB with a
        normalisation) guarantees none of the three: the min-norm weights are not unique when the
        gradients are linearly dependent, and which ones the solver returns depends on rounding
        (a rank-2 4 x 20 matrix gave updates that are neither linear in a scaling nor invariant
        to the task order)."""
        normalization = options.get("normalization", "none")
        if normalization == "none":
            return cls.properties
        if not cls.combine_normalized:
            return frozenset()
        if normalization in ("l2", "loss+"):
            return (cls.properties - {"linear_under_scaling"}) | {"scale_invariant"}
        return cls.properties

    combine_normalized: ClassVar[bool] = True  # LibMTL's parameter path; its representation path does not

    def __init__(self, n_tasks: int, normalization: str = "none") -> None:
        super().__init__(n_tasks)
        if normalization not in self.NORMALISATIONS:
            raise ValueError(f"mgda: normalization={normalization!r}; valid: {', '.join(self.NORMALISATIONS)}")
        self.normalization = normalization

    def normalizers(self, gram: Tensor, losses: Tensor) -> Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        if self.normalization == "l2":
            scale = norms
        elif self.normalization == "loss":
            scale = losses.to(gram)
        elif self.normalization == "loss+":
            scale = losses.to(gram) * norms
        else:
            scale = torch.ones_like(norms)
        return scale.clamp_min(1e-12)

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        scale = self.normalizers(gram, losses)
        normalized = gram / torch.outer(scale, scale)
        a = min_norm_weights(normalized)  # on the normalised gradients
        if a @ normalized @ a <= STATIONARY * len(a) * normalized.diagonal().max():
            return torch.zeros_like(a)  # Pareto-stationary: the min-norm point is 0, the rest is rounding
        return a / scale if self.combine_normalized else a


class MGDAUB(MGDA):
    name = "mgda-ub"
    description = "MGDA on the gradients of the shared representation (MGDA-UB)"
    reference = "LibMTL weighting/MGDA.py with rep_grad=True (convex combination; exact solver)"
    gradients = "representation"
    combine_normalized = False
    matches = ()
