"""SI: scale-invariant linear scalarisation, minimise sum_i log L_i (so each task's gradient is
divided by its loss: a task's scale does not decide its weight).

Paper: the "SI" baseline of Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022
(Table 2 and 3). Reference matched: the authors' nash-mtl code,
``ScaleInvariantLinearScalarization`` (loss = sum(log(losses))): weights 1/L_i on the task
losses, no epsilon. Edge case: a zero loss has an infinite weight; the trainer then records the
cell as failed (non-finite objective) instead of training on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, StepInfo


class SI(LossWeighting):
    name = "si"
    description = "scale-invariant scalarisation: minimise the sum of log-losses"
    citation = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022 (the SI baseline)"
    reference = "authors' nash-mtl ScaleInvariantLinearScalarization (sum of log losses)"
    properties = frozenset({"permutation_invariant"})

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        return 1.0 / losses

    def loss(self, losses: Tensor, info: StepInfo) -> Tensor:
        return torch.log(losses).sum()
