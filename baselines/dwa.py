"""Dynamic weight average (DWA): weight each task by how slowly its loss decreases,
w_i = T softmax(r / temperature)_i with r_i = L_i(e-1) / L_i(e-2), the ratio of the task's mean
training loss over the two previous epochs. The first two epochs use weights of 1.

Paper: Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019.
Reference matched: LibMTL ``weighting/DWA.py`` (epoch-mean training losses, temperature 2,
weights summing to T, ones in epochs 0 and 1). The loss history lives in buffers, so it is saved
and restored with the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, StepInfo


class DWA(LossWeighting):
    name = "dwa"
    counts: Tensor
    epoch: Tensor
    epoch_means: Tensor
    running: Tensor
    description = "dynamic weight average: weights from the epoch-to-epoch loss ratios"
    citation = "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019"
    reference = "LibMTL weighting/DWA.py (T = 2, epoch-mean losses, weights sum to T)"

    def __init__(self, n_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(n_tasks)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        # mean loss of the two last finished epochs (rows: e-2, e-1) and the running epoch's sums
        self.register_buffer("epoch_means", torch.zeros(2, n_tasks, dtype=torch.float64))
        self.register_buffer("running", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.long))  # [batches this epoch, epochs done]
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        if info.epoch != int(self.epoch):  # a new epoch began: close the previous one
            if self.counts[0] > 0:
                self.epoch_means[0] = self.epoch_means[1]
                self.epoch_means[1] = self.running / self.counts[0]
                self.counts[1] += 1
            self.running.zero_()
            self.counts[0] = 0
            self.epoch.fill_(info.epoch)
        self.running += losses.detach().to(self.running)
        self.counts[0] += 1
        if int(self.counts[1]) < 2:
            return torch.ones_like(losses)
        ratio = self.epoch_means[1] / self.epoch_means[0]
        return (len(losses) * torch.softmax(ratio / self.temperature, dim=0)).to(losses)
