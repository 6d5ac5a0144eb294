"""Random loss weighting (RLW): at every step draw task weights at random, weights = softmax(z)
with z ~ N(0, I), and minimise sum_i w_i L_i.

Paper: Lin, Ye, Xu, Shi & Zhang, Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning, TMLR 2022. Reference matched: LibMTL ``weighting/RLW.py`` (softmax of a
standard normal draw, so the weights sum to 1: T times smaller than EW's on average). Option
``distribution = "uniform"`` uses z ~ U(0, 1) before the softmax, another of the paper's
variants. Draws use the cell's seeded generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, ReferenceMatch, StepInfo


class RLW(LossWeighting):
    name = "rlw"
    description = "random loss weights, softmax of a normal draw each step"
    citation = "Lin et al., Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning, TMLR 2022"
    reference = "LibMTL weighting/RLW.py (softmax(randn(T)))"
    properties = frozenset({"linear_under_scaling"})
    matches = (
        ReferenceMatch("LibMTL", "RLW", differences={
            "random-draw": "ours draws from the method's generator, LibMTL from the global RNG; seeded alike (0), the "
                           "float64 draws are equal"}),
    )  # fmt: skip

    DISTRIBUTIONS = ("normal", "uniform")

    def __init__(self, n_tasks: int, distribution: str = "normal") -> None:
        super().__init__(n_tasks)
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution={distribution!r}; valid: {', '.join(self.DISTRIBUTIONS)}")
        self.distribution = distribution

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        draw = torch.randn if self.distribution == "normal" else torch.rand
        z = draw(len(losses), generator=info.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0).to(losses)
