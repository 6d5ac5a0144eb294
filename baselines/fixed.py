"""Fixed-weight linear scalarisation: minimise sum_i w_i L_i with weights given as an option.

A sweep of fixed weight vectors traces the linear-scalarisation front that the leaderboard uses
as its Pareto reference (Xin et al. argue such sweeps match most MTL optimisers). With the
default weights (all ones) it is EW.

Paper: Xin, Ghorbani, Gilmer, Garg & Firat, Do Current Multi-Task Optimization Methods in Deep
Learning Even Help?, NeurIPS 2022. Reference matched: LibMTL ``EW`` generalised to given weights
(a weighted sum, no normalisation of the weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, StepInfo


class Fixed(LossWeighting):
    name = "fixed"
    w: Tensor
    roles = frozenset({"front"})
    description = "fixed task weights (linear scalarisation); option weights = [w_1, ..., w_T]"
    citation = "Xin et al., Do Current Multi-Task Optimization Methods in Deep Learning Even Help?, NeurIPS 2022"
    reference = "LibMTL weighting/EW.py with given weights (weighted sum, weights not normalised)"

    def __init__(self, n_tasks: int, weights: list[float] | None = None) -> None:
        super().__init__(n_tasks)
        values = [1.0] * n_tasks if weights is None else weights
        if not isinstance(values, (list, tuple)) or len(values) != n_tasks:
            raise ValueError(f"weights must be a list of {n_tasks} numbers (one per task), got {weights!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"weights must be finite non-negative numbers, got {weights!r}")
        if sum(values) == 0:
            raise ValueError("weights are all zero: nothing would be trained")
        self.register_buffer("w", torch.tensor([float(v) for v in values]))

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        return self.w.to(losses)
