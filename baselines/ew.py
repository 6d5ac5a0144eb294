"""Equal weighting (EW, also called linear scalarisation with unit weights): minimise the sum
of the task losses. The default of every MTL codebase. Reference matched: LibMTL ``EW``
(weights of 1, a sum, not a mean)."""

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, ReferenceMatch, StepInfo


class EW(LossWeighting):
    name = "ew"
    roles = frozenset({"reference"})
    description = "equal weights: minimise the sum of task losses"
    citation = "the standard multi-task baseline; e.g. Lin et al., LibMTL, JMLR 2023"
    reference = "LibMTL weighting/EW.py (weights = 1)"
    properties = frozenset({"permutation_invariant", "linear_under_scaling"})
    matches = (ReferenceMatch("LibMTL", "EW"),)

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        return torch.ones_like(losses)
