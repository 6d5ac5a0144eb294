"""One run over several processes (``[executor] processes_per_run``): what a rank does
differently from a single process, in one place.

Every rank builds the same model, draws the same batches and runs the method on the same
inputs (same seeds, same generators), so every rank takes the same update. What differs is the
data each rank differentiates: rank r of N keeps block r of each global batch of B samples
(B / N each, :meth:`World.shard`). With per-task losses that are means over samples, the global
batch's loss is the mean of the ranks' losses and its gradient the mean of theirs; so

- the task losses a method sees are the ranks' mean (:meth:`World.losses`: its value is the
  global loss on every rank, its backward the rank's own path);
- per-task gradient matrices (T, P) and the heads' gradients are averaged over ranks before the
  method runs (:meth:`World.average`), and the conflict statistics see the averaged matrix;
- a representation-gradient method sees the (T, B x D) gradient of the whole batch's
  representation, gathered from the ranks' blocks (:meth:`World.gather_rows`);
- a plain backward (a loss weighting, a single-task model) leaves each rank the gradient of its
  block, averaged afterwards over every parameter (:meth:`World.average_grads`);
- batch norms normalise with the global batch's statistics (:func:`synchronise_batch_norms`,
  also each of Recon's per-stream statistics), differentiably, so the running statistics and
  the gradients equal the single process's;
- evaluation batches are shared out between ranks and their outputs gathered, so every rank
  updates its metric state with every batch in the single process's order (:meth:`World.evaluate`).

The collectives run on gloo (CPU) or NCCL (CUDA) with a timeout: a rank that dies makes the
others fail with the reason instead of waiting for ever. Rank 0 alone writes checkpoints and the
result. Not every method kind can run this way: :func:`check_supported` says which and why.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

TIMEOUT_S = float(os.environ.get("MTLBENCH_COLLECTIVE_TIMEOUT_S", "300"))


@dataclass(frozen=True)
class World:
    """This process's place in a run over ``size`` processes (``rank`` 0 writes)."""

    rank: int
    size: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # -- data
    def shard(self, batch: Any) -> Any:
        """This rank's block of a global batch: a tensor (rows), a mapping of them (targets, a
        multi-input task's inputs) or a :class:`~mtlbench.datasets.graphs.GraphBatch` (molecules)."""
        if isinstance(batch, Tensor):
            n = batch.shape[0]
            if n % self.size:
                raise ValueError(f"a batch of {n} cannot be split into {self.size} equal shards")
            k = n // self.size
            return batch[self.rank * k : (self.rank + 1) * k]
        if isinstance(batch, Mapping):
            return {key: self.shard(v) for key, v in batch.items()}
        select = getattr(batch, "graphs", None)
        if callable(select):
            n = len(batch)
            if n % self.size:
                raise ValueError(f"a batch of {n} graphs cannot be split into {self.size} equal shards")
            k = n // self.size
            return select(self.rank * k, (self.rank + 1) * k)
        raise TypeError(f"cannot split a batch of type {type(batch).__name__} between ranks")

    # -- collectives
    def losses(self, local: Tensor) -> Tensor:
        """The global batch's (T,) task losses from this rank's: their mean over ranks, whose
        backward is this rank's own (each rank differentiates its block; the gradients are
        averaged afterwards)."""
        return _GlobalMean.apply(local, self.size)

    def mean(self, local: Tensor) -> Tensor:
        """The mean over ranks of a tensor (no gradient)."""
        out = local.detach().clone()
        dist.all_reduce(out)
        return out / self.size

    def average(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor averaged over ranks (one collective for all)."""
        if not tensors:
            return []
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.size
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()
        return out

    def average_grads(self, params: Iterable[Tensor]) -> None:
        """Every parameter's ``.grad`` averaged over ranks, in place."""
        params = [p for p in params if p.grad is not None]
        for p, g in zip(params, self.average([p.grad for p in params if p.grad is not None])):
            p.grad = g

    def gather_rows(self, rows: Tensor, per_sample: int) -> Tensor:
        """(T, n x per_sample) rows of this rank's n samples -> (T, N x n x per_sample), the ranks'
        blocks in rank order, divided by N (the gradient of the global mean loss)."""
        parts = [torch.empty_like(rows) for _ in range(self.size)]
        dist.all_gather(parts, rows.detach().contiguous())
        t = rows.shape[0]
        return torch.cat([p.reshape(t, -1, per_sample) for p in parts], dim=1).reshape(t, -1) / self.size

    def my_rows(self, full: Tensor) -> Tensor:
        """This rank's block of a vector over the global batch's samples (flattened per sample)."""
        k = full.numel() // self.size
        return full.reshape(-1)[self.rank * k : (self.rank + 1) * k]

    def evaluate(
        self, batches: Iterable[tuple[Any, Any]], run: Callable[[Any, Any], tuple[Any, Any]], update: Callable[[Any, Any], None]
    ) -> None:
        """Evaluation shared out: batch i is run (``run(x, y)`` -> outputs, targets, on the CPU) by
        rank i mod N; every rank then ``update``\\ s its metric state with every batch, in order."""
        batches = list(batches)
        for start in range(0, len(batches), self.size):
            i = start + self.rank
            mine = run(*batches[i]) if i < len(batches) else None
            gathered: list[Any] = [None] * self.size
            dist.all_gather_object(gathered, mine)
            for item in gathered:
                if item is not None:
                    update(*item)


class _GlobalMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, local: Tensor, size: int) -> Tensor:  # type: ignore[override]
        out = local.detach().clone()
        dist.all_reduce(out)
        return out / size

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over ranks; its gradient on each rank is the sum of the ranks'
    gradients of the sum (every rank's loss depends on every rank's input through it)."""

    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:  # type: ignore[override]
        out = local.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.detach().clone()
        dist.all_reduce(out)
        return out


_CURRENT: World | None = None


def current() -> World | None:
    """The world of the run this process is part of; None in a single-process run."""
    return _CURRENT


def initialise(rank: int, size: int, address: str, backend: str = "gloo", device: torch.device | None = None) -> World:
    """Join the run's process group (``address``: ``tcp://host:port`` of rank 0's store;
    ``device``: this rank's GPU with NCCL)."""
    global _CURRENT
    if backend == "nccl":  # NCCL's object collectives (evaluation) use the current device
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=address, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=TIMEOUT_S)
    )
    _CURRENT = World(rank, size)
    return _CURRENT


def shutdown() -> None:
    global _CURRENT
    _CURRENT = None
    if dist.is_initialized():
        dist.destroy_process_group()


# -- batch norm over the global batch


def _synced(bn: nn.modules.batchnorm._BatchNorm, original: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        if not bn.training:
            return original(x)
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = _SumOverRanks.apply(
            torch.cat([x.sum(dims), count])
        )  # differentiable: the statistics' gradient reaches every rank
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n  # two passes, as the single process's kernel
        out = centred * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)  # type: ignore[arg-type]
                unbiased = var.detach() * n / (n - 1)
                bn.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                bn.running_var.mul_(1 - factor).add_(unbiased * factor)
        return out

    return forward


def synchronise_batch_norms(model: nn.Module) -> int:
    """Make every batch norm of ``model`` normalise, in training mode, with the statistics of the
    global batch (all ranks' samples); returns how many. Works on the layer itself, so a layer
    that another module runs with swapped running buffers (Recon's per-stream statistics,
    :class:`~mtlbench.plugin.branching.PerStream`) updates the buffers it is given."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        if "forward" not in m.__dict__:
            m.forward = _synced(m, m.forward)  # type: ignore[method-assign,assignment]
    return len(layers)


def check_supported(method: Any, task: Any) -> None:
    """Refuse, with the reason, what a run over several processes cannot reproduce exactly."""
    from mtlbench.plugin.method import LastLayerBayes, MetaWeighting, SequentialGroups, SharpnessAware
    from mtlbench.plugin.task import Task

    kinds = (MetaWeighting, SharpnessAware, SequentialGroups, LastLayerBayes)
    if isinstance(method, kinds):
        raise ValueError(
            f"method {method.name!r} (kind {method.kind!r}) runs the model again inside a step (meta batches, "
            "perturbed weights, several updates or the heads' posteriors); a run over several processes does not "
            "support that kind yet: set processes_per_run = 1 for it"
        )
    if type(task).augment is not Task.augment:
        raise ValueError(
            f"task {task.name!r} augments its training batches and averages its losses over pixels, so the mean of the "
            "ranks' losses is not the global batch's: a run over several processes would not equal the single-process "
            "run; set processes_per_run = 1 for it"
        )
