"""Auto-Lambda: task weights learned by a one-step look-ahead. The model trains on
sum_i lambda_i L_i; before each update, lambda takes one Adam step on the meta-gradient of the
loss of a second batch after a virtual step of the model (a finite-difference approximation of
the Hessian-vector product, as in DARTS).

Paper: Liu, Johns & Davison, Auto-Lambda: Disentangling Dynamic Task Relationships, TMLR 2022.
Reference matched: the authors' lorenmt/auto-lambda @ bdba636 (``auto_lambda.py``, driven as
``trainer_dense.py`` drives it): lambda starts at ``init`` = 0.1 for every task and is updated
by Adam with learning rate ``lr`` = 1e-4 (``--autol_init``, ``--autol_lr``); the virtual step is
theta' = theta - alpha (momentum + g + weight decay theta) with the model optimiser's current
learning rate alpha, momentum buffer and weight decay (a plain SGD step whatever the optimiser:
with Adam the reference's formula has no momentum term); the meta objective is the loss of the
meta batch at theta' summed over the primary tasks (all of them in multi-task learning: the
auxiliary-learning mode, where only some tasks are primary, is not offered); eps = 0.01 / ||d||;
the meta-gradient is -alpha (L(theta + eps d) - L(theta - eps d)) / (2 eps), L the training
batch's task losses. Lambda is not constrained (it may leave [0, 1] or turn negative, as in the
reference).

Which batches it sees: the reference's meta ("validation") batch comes from a second loader
over the *training* set with its own shuffling, one batch per step; here too: each step pairs
the training batch with one batch of an independent shuffled pass over the training split
(augmented as training batches are). The validation split stays for model selection only.

Checked against records of the reference code itself (tests/test_auto_lambda.py: T = 2, 3, 5,
a rank-deficient representation, SGD with momentum and weight decay and Adam, lambda's learning
rate 1e-4 and 1e-2, four steps): meta-gradients, lambda, parameters and batch-norm statistics
agree to ~1e-7 relative on one thread, as the records were made (float32 rounding), and to ~3e-5
on two (float32 sums in another order, amplified by the finite difference). As in the reference, the training batch runs forward
four times a step in training mode (the virtual step's gradient, theta + eps d, theta - eps d,
the update), so batch-norm statistics see it four times; the virtual parameters run on a copy of
the model's buffers instead of the reference's second model (the same outputs in training
mode). Not in the reference: a meta batch whose loss is flat at theta' (d = 0) gives a zero
meta-gradient instead of a division by zero. With a mitigation that masks updates (ST), the
virtual step is unmasked, as the reference knows no masks.

Cost per step: four forwards of the training batch, one of the meta batch, and three backward
passes (the virtual step's gradient, the meta batch's at theta', the update): measured in
bench/method_cost.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlbench.api import MetaWeighting, StepInfo

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the reference's meta optimiser uses
ADAM_EPS = 1e-8


class AutoLambda(MetaWeighting):
    name = "auto-lambda"
    version = "1"
    lam: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    description = "Auto-Lambda: task weights meta-learned by a one-step look-ahead on a second batch"
    citation = "Liu, Johns & Davison, Auto-Lambda: Disentangling Dynamic Task Relationships, TMLR 2022"
    reference = "lorenmt/auto-lambda auto_lambda.py (init 0.1, Adam 1e-4 on lambda, finite-difference meta-gradient)"

    def __init__(self, n_tasks: int, init: float = 0.1, lr: float = 1e-4) -> None:
        super().__init__(n_tasks)
        if lr <= 0:
            raise ValueError(f"auto-lambda: lr={lr!r}; expected a learning rate > 0")
        self.lr = lr
        # float32, as the reference's meta_weights
        self.register_buffer("lam", torch.full((n_tasks,), float(init), dtype=torch.float32))
        self.register_buffer("exp_avg", torch.zeros(n_tasks, dtype=torch.float32))
        self.register_buffer("exp_avg_sq", torch.zeros(n_tasks, dtype=torch.float32))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        return self.lam.to(losses.dtype)

    def meta_step(self, grad: Tensor, info: StepInfo) -> None:
        """One step of torch.optim.Adam (single-tensor form, no weight decay) on lambda."""
        grad = grad.detach().to(self.lam)
        self.adam_steps += 1
        step = int(self.adam_steps)
        self.exp_avg.lerp_(grad, 1 - BETAS[0])
        self.exp_avg_sq.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
        bias1, bias2 = 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(ADAM_EPS)
        self.lam.addcdiv_(self.exp_avg, denom, value=-self.lr / bias1)
