"""Sparse training (ST): update only a fixed subset of the shared encoder's weights.

Paper: Zhang, Shen, Cao, Dai, Zhou, Zhang, Zhang & Shutova, "Proactive Gradient Conflict
Mitigation in Multi-Task Learning: A Sparse Training Perspective", 2024 (arXiv 2411.18615).
No public implementation exists; this one follows the paper's description:

- Update rule Θ ← Θ − α·M⊙∇L with a fixed 0/1 mask M on the shared encoder only; heads train
  fully. With a gradient method, the method works on the task gradients restricted to the
  trainable coordinates and its combined update is masked again.
- Mask selection, chosen once before training from the initial weights:
  ``psn`` (the paper's choice): for every neuron (an output unit; for a conv an output channel
  over its in_ch x kh x kw inputs) keep the top-K incoming weights by |w|;
  ``random``: K random incoming weights per neuron; ``reverse``: the K smallest per neuron;
  ``global``: the top ``fraction`` of all encoder weights by |w|, ignoring neurons.
  K is ``k`` when given, else round(``fraction`` x fan-in) (at least 1).
- Neuron weights are the weights of Conv/Linear layers. Biases, norm parameters and tokens
  (a ViT's cls_token/pos_embed) have no incoming connections: they train fully by default
  (``train_bias_and_norm``), or stay frozen. The result reports the actual trainable share.
- Masked weights never move: gradients are masked before the optimiser step, masked entries of
  the optimiser state (momentum, Adam moments) are zeroed after it, and masked weights are
  restored after it, so weight decay (SGD's or AdamW's) cannot move them either.
- One rule for every method kind: ST restricts what is trained, so the method sees the task
  gradients of the trainable coordinates. Parameter-gradient methods get the masked (T, P)
  matrix and their update is masked again; loss weightings' single backward and
  representation-gradient methods' (mgda-ub, aligned-mtl-ub: their weights come from gradients
  of the shared representation, which have no parameter coordinates to mask) back-propagated
  update are masked before the step. The mask is applied before the method's gradient clipping
  (``max_norm``, e.g. nash-mtl's), so frozen coordinates never count in the clip (version 1
  clipped first).
- Conflict statistics under ST are measured on the masked task gradients (what is trained).
The paper trains ~30% of a pretrained encoder and ~60% of MTAN from scratch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtlbench.core.result import MitigationClaim
from mtlbench.plugin.mitigation import Mitigation, MitigationContext
from mtlbench.plugin.model import MultiTaskModel

SELECTIONS = ("psn", "random", "reverse", "global")
NEURON_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def neuron_mask(weight: Tensor, keep: int, selection: str, generator: torch.Generator | None = None) -> Tensor:
    """Boolean mask keeping ``keep`` incoming weights of every neuron (row of the flattened weight)."""
    w = weight.detach().flatten(1)
    keep = max(1, min(keep, w.shape[1]))
    if selection == "psn":
        idx = w.abs().topk(keep, dim=1).indices
    elif selection == "reverse":
        idx = w.abs().topk(keep, dim=1, largest=False).indices
    elif selection == "random":
        scores = torch.rand(w.shape, generator=generator, dtype=torch.float64).to(w.device)
        idx = scores.topk(keep, dim=1).indices
    else:
        raise ValueError(f"unknown per-neuron selection {selection!r}")
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.view_as(weight)


class SparseTraining(Mitigation):
    name = "st"
    description = "train only a fixed magnitude-selected subset of the shared encoder (ST, PSN masks)"
    citation = (
        "Zhang et al., Proactive Gradient Conflict Mitigation in Multi-Task Learning: "
        "A Sparse Training Perspective, arXiv 2411.18615, 2024"
    )
    reference = "the paper's description (no public code): PSN masks per output unit, chosen once before training"
    version = "2"  # the mask before the method's clipping
    masks_gradients = True
    claims = (
        MitigationClaim(text="Sparse training reduces the occurrence of conflicting gradients", measure="p_ref"),
        MitigationClaim(text="Sparse training improves every method it is added to", measure="dm"),
        MitigationClaim(
            text="Sparse training is compatible with gradient-manipulation methods: it improves them further",
            measure="dm",
            kinds=("gradient",),
        ),
    )

    def __init__(self, fraction: float = 0.3, k: int = 0, selection: str = "psn", train_bias_and_norm: bool = True) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"st: selection={selection!r}; valid: {', '.join(SELECTIONS)}")
        if not 0.0 < fraction <= 1.0 or k < 0:
            raise ValueError(f"st: fraction={fraction} must be in (0, 1] and k={k} >= 0 (0: use the fraction)")
        if selection == "global" and k:
            raise ValueError("st: selection='global' keeps a fraction of all weights; k applies to per-neuron selections")
        self.fraction, self.k, self.selection = float(fraction), int(k), selection
        self.train_bias_and_norm = bool(train_bias_and_norm)
        self.params: list[nn.Parameter] = []
        self.masks: list[Tensor] = []
        self.frozen: list[Tensor] = []
        self.flat_mask: Tensor | None = None
        self._report: dict[str, Any] | None = None

    def prepare(self, model: MultiTaskModel, ctx: MitigationContext) -> MultiTaskModel:
        neuron_weights = {id(m.weight) for m in model.modules() if isinstance(m, NEURON_LAYERS) and m.weight is not None}
        shared = model.shared_parameters()
        generator = torch.Generator().manual_seed(ctx.seed + 3_000_017)
        weights = [p for p in shared if id(p) in neuron_weights]
        threshold = None
        if self.selection == "global" and weights:
            magnitudes = torch.cat([p.detach().abs().flatten() for p in weights])
            n_keep = max(1, round(self.fraction * magnitudes.numel()))
            threshold = magnitudes.kthvalue(magnitudes.numel() - n_keep + 1).values
        masks = []
        for p in shared:
            if id(p) in neuron_weights:
                if threshold is not None:
                    mask = p.detach().abs() >= threshold
                else:
                    fan_in = p[0].numel()
                    keep = self.k if self.k else max(1, round(self.fraction * fan_in))
                    mask = neuron_mask(p, keep, self.selection, generator)
            else:
                mask = torch.full_like(p, self.train_bias_and_norm, dtype=torch.bool)
            masks.append(mask)
        self.params, self.masks = shared, masks
        self.frozen = [p.detach().clone() for p in shared]
        self.flat_mask = torch.cat([m.flatten() for m in masks])
        total = self.flat_mask.numel()
        trainable = int(self.flat_mask.sum())
        in_weights = sum(p.numel() for p in weights)
        kept_weights = sum(int(m.sum()) for p, m in zip(shared, masks) if id(p) in neuron_weights)
        self._report = {
            "selection": self.selection,
            "fraction": self.fraction,
            "k": self.k,
            "train_bias_and_norm": self.train_bias_and_norm,
            "shared_params": total,
            "trainable_params": trainable,
            "trainable_pct": 100.0 * trainable / total if total else 0.0,
            "neuron_weights": in_weights,
            "neuron_weights_kept_pct": 100.0 * kept_weights / in_weights if in_weights else 0.0,
            "masked_tensors": sum(1 for m in masks if not bool(m.all())),
        }
        return model

    def mask_task_gradients(self, grads: Tensor) -> Tensor:
        assert self.flat_mask is not None
        return grads * self.flat_mask.to(device=grads.device, dtype=grads.dtype)

    def before_step(self) -> None:
        for p, m in zip(self.params, self.masks):
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for p, m, f in zip(self.params, self.masks, self.frozen):
            p.copy_(torch.where(m, p, f))
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.mul_(m)

    def report(self) -> dict[str, Any] | None:
        return self._report
