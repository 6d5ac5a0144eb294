"""GradDrop: gradient sign dropout. Per coordinate, the sign purity
P = (1 + sum_i g_i / sum_i |g_i|) / 2 is the chance of keeping the positive gradients; draw
U ~ U(0, 1), keep the positive entries where P > U and the negative ones where P < U, and sum
the kept (plus ``leak`` times the dropped) task gradients. Computed from the per-coordinate
sum and absolute sum of the task gradients (two passes over the (T, P) matrix).

Paper: Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, Just Pick a Sign: Optimizing
Deep Multitask Models with Gradient Sign Dropout, NeurIPS 2020 (Algorithm 1, lines 10-15).
Reference matched: torchjd ``aggregation.GradDrop`` (f = identity, same formula on the (T, P)
matrix), with U drawn from the cell's seeded generator instead of the global RNG. LibMTL's
GradDrop differs: it only works on representation gradients and first sums them over the batch
weighted by the sign of the representation. Edge case: a coordinate where every task gradient
is 0 gets P = 1/2 and contributes 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, ReferenceMatch, StepInfo


class GradDrop(GradientAggregator):
    name = "graddrop"
    description = "gradient sign dropout: keep one sign per coordinate at random by sign purity"
    citation = "Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout, NeurIPS 2020"
    reference = "torchjd aggregation.GradDrop (f = identity), seeded generator"
    properties = frozenset({"linear_under_scaling"})
    matches = (
        ReferenceMatch("LibMTL", "GradDrop", options={"leak": "leak"}, differences={
            "random-draw": "U from the method's generator, LibMTL's from the global RNG (torch.rand_like); seeded alike "
                           "(0) the draws are equal",
            "representation": "LibMTL runs GradDrop on representation gradients only; the records take the "
                              "representation to be the parameters themselves (all ones), where the two agree",
            "epsilon": "LibMTL adds 1e-7 to the absolute sum in the sign purity"}),
    )  # fmt: skip

    def __init__(self, n_tasks: int, leak: float = 0.0) -> None:
        super().__init__(n_tasks)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {leak}")
        self.leak = leak

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        ones = torch.ones(grads.shape[0], dtype=grads.dtype, device=grads.device)
        total, mass = ones @ grads, ones @ grads.abs()  # matrix-vector products: faster than sum(dim=0)
        purity = 0.5 * (1 + torch.where(mass > 0, total / mass.clamp_min(torch.finfo(grads.dtype).tiny), 0))
        u = torch.rand(purity.shape, generator=info.generator, dtype=grads.dtype).to(grads.device)
        # kept = positive entries where P > U, negative ones where P < U; summed over tasks that is
        # [P > U] (sum of positives) + [P < U] (sum of negatives), with the sums from total and mass
        kept = (purity > u) * (0.5 * (total + mass)) + (purity < u) * (0.5 * (total - mass))
        return self.leak * total + (1 - self.leak) * kept
