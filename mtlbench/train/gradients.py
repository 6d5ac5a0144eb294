"""Per-task gradients of the shared parameters (or of the shared representation).

Three exact strategies compute the same (T, P) matrix, behind :func:`task_gradients`:

- ``loop``: one ``autograd.grad`` per task over a retained graph (T backward passes);
- ``batched``: ``autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the backward pass
  with one-hot output gradients, ``chunk_size`` rows at a time;
- ``torchjd``: torchjd's Jacobian engine (``torchjd.autojac.jac``), ``chunk_size`` rows in
  parallel.

They agree to floating-point rounding, not bitwise. :func:`default_strategy` is the rule the
trainer uses (a pure function of the device type and T, never a timing race), and every result
records the strategy and chunk size it ran with. ``bench/method_cost.py`` measures all three.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

STRATEGIES = ("loop", "batched", "torchjd")
MAX_CHUNK = 8  # rows differentiated together by the batched strategies: bounds memory for large T


def default_strategy(device: torch.device, n_tasks: int) -> tuple[str, int]:
    """The strategy and chunk size the trainer uses: ``batched`` on CUDA (one vmapped backward
    beats T launches), ``loop`` on CPU (vmap brings no parallelism there and costs more memory);
    chunks of at most ``MAX_CHUNK`` rows so that T = 40 (CelebA) stays within memory."""
    if device.type == "cuda":
        return "batched", min(n_tasks, MAX_CHUNK)
    return "loop", 1


def task_gradients(
    losses: Sequence[Tensor],
    shared: Sequence[Tensor],
    private: Sequence[Sequence[Tensor]] | None = None,
    retain_graph: bool = False,
    strategy: str = "loop",
    chunk_size: int = 0,
) -> tuple[Tensor, list[list[Tensor]]]:
    """Gradient of each task loss w.r.t. the shared tensors, as a (T, P) matrix.

    ``private[i]`` are task i's own parameters (its head): their gradients come from the same
    pass and are returned as lists. Inputs a loss does not reach get zero gradients.
    ``chunk_size`` (0 = all T rows at once) applies to the batched strategies.
    """
    n = len(losses)
    private = private if private is not None else [[] for _ in range(n)]
    if strategy == "loop":
        return _loop(losses, shared, private, retain_graph)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown per-task gradient strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    heads = [p for ps in private for p in ps]
    inputs = list(shared) + heads
    chunk = chunk_size if chunk_size > 0 else n
    if strategy == "batched":
        blocks = _batched(losses, inputs, chunk, retain_graph)
    else:
        blocks = _torchjd(losses, inputs, chunk, retain_graph)
    matrix = torch.cat([b.reshape(n, -1) for b in blocks[: len(shared)]], dim=1)
    private_grads, offset = [], len(shared)
    for i, ps in enumerate(private):
        private_grads.append([blocks[offset + k][i] for k in range(len(ps))])
        offset += len(ps)
    return matrix, private_grads


def _loop(
    losses: Sequence[Tensor], shared: Sequence[Tensor], private: Sequence[Sequence[Tensor]], retain_graph: bool
) -> tuple[Tensor, list[list[Tensor]]]:
    n = len(losses)
    first = shared[0] if shared else losses[0]
    matrix = torch.empty(n, sum(p.numel() for p in shared), dtype=first.dtype, device=first.device)
    private_grads: list[list[Tensor]] = []
    for i, loss in enumerate(losses):
        inputs = list(shared) + list(private[i])
        found = torch.autograd.grad(loss, inputs, retain_graph=retain_graph or i < n - 1, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, found)]
        torch.cat([g.reshape(-1) for g in grads[: len(shared)]], out=matrix[i])  # no stacking copy
        private_grads.append(list(grads[len(shared) :]))
    return matrix, private_grads


def _batched(losses: Sequence[Tensor], inputs: list[Tensor], chunk: int, retain_graph: bool) -> list[Tensor]:
    stacked = torch.stack(list(losses))
    n = stacked.shape[0]
    eye = torch.eye(n, dtype=stacked.dtype, device=stacked.device)
    parts: list[list[Tensor]] = [[] for _ in inputs]
    for start in range(0, n, chunk):
        last = start + chunk >= n
        grads = torch.autograd.grad(
            stacked,
            inputs,
            grad_outputs=eye[start : start + chunk],
            retain_graph=retain_graph or not last,
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
        for k, g in enumerate(grads):
            parts[k].append(g)
    return [torch.cat(p) if len(p) > 1 else p[0] for p in parts]


def _torchjd(losses: Sequence[Tensor], inputs: list[Tensor], chunk: int, retain_graph: bool) -> list[Tensor]:
    from torchjd.autojac import jac

    unreached = [not t.requires_grad for t in inputs]
    if any(unreached):
        raise ValueError("torchjd strategy: every input must require grad")
    return list(jac(list(losses), inputs, retain_graph=retain_graph, parallel_chunk_size=chunk))


def assign_flat_grad(params: Sequence[Tensor], flat: Tensor) -> None:
    """Write a flat vector into ``p.grad`` of each parameter, in order."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    if offset != flat.numel():
        raise ValueError(f"update has {flat.numel()} entries, parameters have {offset}")


def clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> None:
    """Scale the gradients of ``params`` so that their global norm is at most ``max_norm``."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def pullback_rows(output: Tensor, rows: Tensor, params: Sequence[Tensor]) -> Tensor:
    """Rows of gradients w.r.t. ``output`` (flattened) pulled back to ``params``: (T, P).

    Turns representation gradients into parameter gradients (one backward pass per row, graph
    retained), e.g. to sample conflict statistics for representation-gradient methods."""
    out = []
    for row in rows:
        grads = torch.autograd.grad(
            output, list(params), grad_outputs=row.view_as(output), retain_graph=True, allow_unused=True, materialize_grads=True
        )
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out)
