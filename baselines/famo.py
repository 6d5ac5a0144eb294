"""FAMO: fast adaptive multitask optimisation. Minimise sum_i z_i log(L_i - m_i) / c with task
logits w (z = softmax(w), c = sum_i z_i / (L_i - m_i), detached), so the step decreases every
task's log-loss at about the same rate with O(1) cost per step (no per-task gradients). After
the optimiser step, the logits move along the observed log-loss decrease on the same batch,
delta_i = log(L_i^before - m_i) - log(L_i^after - m_i), by one Adam step on the gradient
J_softmax(w)^T delta (learning rate ``w_lr``, weight decay ``gamma``).

Paper: Liu, Liu, Jin, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023.
Reference matched: the authors' ``famo.py`` (github.com/Cranial-XIX/FAMO): defaults
gamma = 0.01, w_lr = 0.025, max_norm = 1.0 (the shared gradient is clipped to norm 1),
min_losses m = 0, eps 1e-8 inside the logs, Adam(0.9, 0.999, eps 1e-8) on the logits, and the
update losses recomputed on the same batch after the step (the trainer's
``wants_losses_after_step`` hook; the model stays in training mode, as in the reference).
That costs one extra forward pass per step; option ``update_losses = "next_batch"`` instead
updates the logits at the start of the next step from that step's losses (a new batch): no
extra pass, the O(1) cost the paper claims, but not the authors' code. Difference: the
logits' Adam state lives in buffers so it is saved with the method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlbench.api import LossWeighting, StepInfo

EPS = 1e-8


class FAMO(LossWeighting):
    name = "famo"
    adam_m: Tensor
    adam_t: Tensor
    adam_v: Tensor
    has_prev: Tensor
    logits: Tensor
    min_losses: Tensor
    prev_losses: Tensor
    description = "FAMO: balanced log-loss decrease with O(1) extra cost"
    citation = "Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023"
    reference = "authors' famo.py (gamma 0.01, w_lr 0.025, max_norm 1, losses re-evaluated on the same batch)"
    wants_losses_after_step = True

    UPDATE_LOSSES = ("same_batch", "next_batch")

    def __init__(
        self,
        n_tasks: int,
        gamma: float = 0.01,
        w_lr: float = 0.025,
        max_norm: float = 1.0,
        min_losses: list[float] | None = None,
        update_losses: str = "same_batch",
    ) -> None:
        super().__init__(n_tasks)
        if w_lr <= 0 or gamma < 0 or max_norm < 0:
            raise ValueError(f"need w_lr > 0, gamma >= 0, max_norm >= 0; got {w_lr}, {gamma}, {max_norm}")
        if update_losses not in self.UPDATE_LOSSES:
            raise ValueError(f"update_losses={update_losses!r}; valid: {', '.join(self.UPDATE_LOSSES)}")
        self.wants_losses_after_step = update_losses == "same_batch"  # type: ignore[misc]  # per instance
        mins = [0.0] * n_tasks if min_losses is None else min_losses
        if len(mins) != n_tasks:
            raise ValueError(f"min_losses must have {n_tasks} entries, got {min_losses!r}")
        self.gamma, self.w_lr, self.max_norm = gamma, w_lr, max_norm
        self.register_buffer("logits", torch.zeros(n_tasks))
        self.register_buffer("min_losses", torch.tensor([float(m) for m in mins]))
        self.register_buffer("prev_losses", torch.zeros(n_tasks))
        self.register_buffer("adam_m", torch.zeros(n_tasks))
        self.register_buffer("adam_v", torch.zeros(n_tasks))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))  # next_batch: an update is pending

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        z = torch.softmax(self.logits, dim=0).to(losses)
        d = losses.detach() - self.min_losses.to(losses) + EPS
        return z / d / (z / d).sum()  # the gradient weights of the loss below

    def loss(self, losses: Tensor, info: StepInfo) -> Tensor:
        if not self.wants_losses_after_step and bool(self.has_prev):
            self.after_step(losses, info)  # next_batch: the previous step's update, from this batch
        self.prev_losses.copy_(losses.detach())
        self.has_prev.fill_(True)
        z = torch.softmax(self.logits, dim=0).to(losses)
        d = losses - self.min_losses.to(losses) + EPS
        c = (z / d).sum().detach()
        return (d.log() * z / c).sum()

    @torch.no_grad()
    def after_step(self, losses: Tensor, info: StepInfo) -> None:
        m = self.min_losses
        delta = (self.prev_losses - m + EPS).log() - (losses.detach().to(m) - m + EPS).log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits  # softmax VJP + L2 (Adam's weight decay)
        self.adam_t += 1
        t = int(self.adam_t)
        self.adam_m.mul_(0.9).add_(grad, alpha=0.1)
        self.adam_v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        m_hat = self.adam_m / (1 - 0.9**t)
        v_hat = self.adam_v / (1 - 0.999**t)
        self.logits -= self.w_lr * m_hat / (v_hat.sqrt() + 1e-8)
