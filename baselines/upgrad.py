"""UPGrad and DualProj: updates projected onto the dual cone of the task gradients (the set of
vectors with a non-negative inner product with every task gradient), so that they never
conflict with any task.

- ``upgrad``: project every task gradient onto the dual cone and average the projections.
  Paper: Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, arXiv 2406.16232
  (2024).
- ``dualproj``: project the mean gradient onto the dual cone, the closest non-conflicting
  update to it: the projection of Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual
  Learning, NeurIPS 2017 (Eq. 11), applied to the mean gradient as in Quinton & Rey (2024).

Reference matched: torchjd 0.18 ``aggregation.UPGrad`` and ``aggregation.DualProj`` (the
authors' own library): their weightings applied to our float64 Gram matrix, preference vector 1/T (a mean, not a sum), each
projection a QP solved by quadprog on the Gram matrix normalised with norm_eps = 1e-4 and
regularised with reg_eps = 1e-4 (so "non-conflicting" holds up to that regularisation; with
reg_eps -> 0 it is exact). Needs the optional solver: ``pip install "mtlbench[solvers]"``.
Edge cases: non-conflicting gradients are left as they are (UPGrad and DualProj give the mean);
exactly opposite gradients give (nearly) the zero vector. Guarantee, precisely: with
``reg_eps`` -> 0 the update never conflicts (tests pin it); with the defaults both epsilons are
absolute, so where the Gram matrix is small against them (gradients of norm ~1e-3, or exactly
opposite ones) the update is only approximately non-conflicting (on G = [g, -2.3 g] with
||g|| = 1.6 the default update has g . d = -7e-4 ||g||^2) and not linear in the gradients' scale.

Version 2: float64 Gram matrix.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlbench.api import GramWeighting, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import torchjd_aggregator


class UPGrad(GramWeighting):
    name = "upgrad"
    version = "2"
    # torchjd's absolute norm_eps/reg_eps: non-conflicting and scale-linear only up to them (see the docstring)
    properties = frozenset({"permutation_invariant"})
    matches: ClassVar[tuple[ReferenceMatch, ...]] = (
        ReferenceMatch("LibMTL", "UPGrad", options={"norm_eps": "UPGrad_norm_eps", "reg_eps": "UPGrad_reg_eps"},
                       rtol=1e-5, atol=1e-8, differences={"solver": "both solve the same QPs with quadprog"}),
    )  # fmt: skip
    description = "mean of the task gradients projected onto their dual cone (never conflicts)"
    citation = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, arXiv 2406.16232, 2024"
    reference = "torchjd 0.18 aggregation.UPGrad (quadprog projector, norm_eps 1e-4, reg_eps 1e-4)"
    torchjd_class: ClassVar[str] = "UPGrad"

    def __init__(self, n_tasks: int, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        super().__init__(n_tasks)
        self.aggregator = torchjd_aggregator(self.torchjd_class, self.name)
        self.aggregator.projector.norm_eps, self.aggregator.projector.reg_eps = norm_eps, reg_eps

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        return self.aggregator.gramian_weighting(gram)  # torchjd's weights from the Gram matrix


class DualProj(UPGrad):
    name = "dualproj"
    matches = ()
    description = "the mean gradient projected onto the dual cone of the task gradients"
    citation = (
        "Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning, NeurIPS 2017 "
        "(dual-cone projection); Quinton & Rey, arXiv 2406.16232, 2024"
    )
    reference = "torchjd 0.18 aggregation.DualProj (quadprog projector, norm_eps 1e-4, reg_eps 1e-4)"
    torchjd_class = "DualProj"
