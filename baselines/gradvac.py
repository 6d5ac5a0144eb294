"""Gradient vaccine (GradVac): for each task i and every other task j (shuffled), if the cosine
phi_ij between the running g_i' and g_j falls below its moving target phi^_ij, add
w g_j to g_i' so that the cosine reaches the target, with
w = ||g_i'|| (phi^ sqrt(1 - phi^2) - phi sqrt(1 - phi^^2)) / (||g_j|| sqrt(1 - phi^^2));
then phi^_ij <- (1 - beta) phi^_ij + beta phi_ij. The update is sum_i g_i'.

Paper: Wang, Tsvetkov, Firat & Cao, Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models, ICLR 2021. Reference matched: LibMTL
``weighting/GradVac.py``: beta = 0.5, targets initialised to 0, 1e-8 in the denominators, the
cosine of the *adjusted* g_i' with the original g_j, a sum over tasks, and a granularity option:
``whole`` (LibMTL's default group_type 0: one target per task pair) or ``layer`` (one per pair
and shared layer, LibMTL's group_type 1). The shuffle uses the cell's seeded generator.
Inner products come from per-group float64 Gram matrices (g_i' kept as coefficients on the
original gradients), as in torchjd's GradVac, which is the ``whole`` variant. The cosine phi is
clamped to [-1, 1]: in the Gram form ||g_i'||^2 can cancel to 0 (a rank-1 matrix at scale 1e3)
while g_i' . g_j does not, which gave |phi| > 1 and NaN from sqrt(1 - phi^2) in version 1; the
reference's vector formula stays finite there, and so does ours now.

Version 2: the clamp above; float64 Gram matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import GradientAggregator, ReferenceMatch, StepInfo
from mtlbench.plugin.solvers import gram_matrix


class GradVac(GradientAggregator):
    name = "gradvac"
    targets: Tensor
    description = "gradient vaccine: raise pairwise cosines toward their moving targets"
    citation = (
        "Wang et al., Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual "
        "Models, ICLR 2021"
    )
    reference = "LibMTL weighting/GradVac.py (beta 0.5, whole-model targets by default)"
    version = "2"
    properties = frozenset[str]()  # the reference's 1e-8 in its denominators is absolute: not scale-free
    matches = (
        ReferenceMatch("LibMTL", "GradVac", options={"beta": "GradVac_beta",
                                                     "granularity": ("GradVac_group_type", {0: "whole", 1: "layer"})},
                       rtol=1e-6, atol=1e-8, differences={
                           "random-order": "per task a shuffle of the other tasks: ours from the method's generator, "
                                           "LibMTL's from Python's random (the test gives both the same orders)"}),
    )  # fmt: skip

    GRANULARITIES = ("whole", "layer")

    def __init__(self, n_tasks: int, beta: float = 0.5, granularity: str = "whole") -> None:
        super().__init__(n_tasks)
        if granularity not in self.GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}; valid: {', '.join(self.GRANULARITIES)}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.granularity = beta, granularity
        self.register_buffer("targets", torch.empty(0))  # (T, T, groups), sized at the first step

    def _blocks(self, grads: Tensor, info: StepInfo) -> list[Tensor]:
        """The gradient matrix split into the groups that get their own targets."""
        if self.granularity == "whole":
            return [grads]
        sizes = list(info.layer_sizes)
        if sum(sizes) != grads.shape[1]:
            raise ValueError(f"gradvac: layer sizes sum to {sum(sizes)}, gradients have {grads.shape[1]} entries")
        return list(grads.split(sizes, dim=1))

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        # g_i' is tracked per group as coefficients on the original gradients, so inner products
        # and norms come from the groups' Gram matrices (as in torchjd's GradVac).
        t = grads.shape[0]
        blocks = self._blocks(grads, info)
        gram = torch.stack([gram_matrix(b) for b in blocks])  # (K, T, T)
        k = gram.shape[0]
        if self.targets.shape != (t, t, k):
            self.targets = torch.zeros(t, t, k, dtype=torch.float64, device=grads.device)
        coef = torch.eye(t, dtype=gram.dtype, device=gram.device).repeat(k, 1, 1)  # (K, T, T)
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()  # (K, T)
        for i in range(t):
            others = [j for j in range(t) if j != i]
            order = torch.randperm(len(others), generator=info.generator).tolist()
            for j in (others[o] for o in order):
                c = coef[:, i]  # (K, T)
                norm_i = torch.einsum("kt,kts,ks->k", c, gram, c).clamp_min(0).sqrt()
                phi = (torch.einsum("kt,kt->k", c, gram[:, :, j]) / (norm_i * norms[:, j] + 1e-8)).clamp(-1, 1)
                target = self.targets[i, j]
                low = phi < target
                if bool(low.any()):
                    w = (
                        norm_i
                        * (target * (1 - phi**2).sqrt() - phi * (1 - target**2).sqrt())
                        / (norms[:, j] * (1 - target**2).sqrt() + 1e-8)
                    )
                    coef[:, i, j] += torch.where(low, w, torch.zeros_like(w))
                self.targets[i, j] = (1 - self.beta) * target + self.beta * phi
        weights = coef.sum(dim=1).to(grads.dtype)  # (K, T)
        return torch.cat([w @ b for w, b in zip(weights, blocks)])
