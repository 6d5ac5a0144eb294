"""How one training step turns task losses into parameter gradients: one update strategy per
method kind, chosen once per run (:func:`strategy_for`), and one conflict probe that every
strategy calls.

A step (:meth:`mtlbench.train.trainer.Trainer.train_step`) asks its strategy for the task
outputs of each training batch (:meth:`UpdateStrategy.outputs`), computes the task losses, then
has the strategy fill ``.grad`` of the shared and head parameters
(:meth:`UpdateStrategy.fill_gradients`) from a :class:`StepContext`. The trainer then lets the
mitigation mask the update, clips, and steps the optimiser.

=====================  ==========================================================================
strategy               method kind
=====================  ==========================================================================
SumOfLosses            no method (one task, e.g. a single-task model): backward of the sum
WeightedLoss           ``LossWeighting``: backward of the method's weighted objective
ParameterGradients     ``GradientAggregator`` on parameters: the (T, P) task gradients of the
                       shared parameters, the method's update, each head its own gradient
RepresentationGrads    ``GradientAggregator`` with ``gradients = "representation"``: the graph
                       is cut at the shared representation; the method aggregates (T, N x D)
                       gradients, the update is back-propagated through the trunk
MultiSample            ``MultiSampleAggregator``: several batches per step, a (S, T, P) tensor
LookAhead              ``MetaWeighting``: a virtual step and a meta batch update the weights,
                       then the backward of the weighted objective
SharpnessAwareGrads    ``SharpnessAware`` (SAMO): each task's gradient at weights perturbed
                       along its own ascent direction, combined by the wrapped base method
GroupSequential        ``SequentialGroups``: one optimiser step per task group, each on a
                       fresh forward pass (the last one is the trainer's own step)
LastLayerGradients     ``LastLayerBayes``: cut at the representation like RepresentationGrads;
                       the method also sees each head's weights and the targets
=====================  ==========================================================================

A new method kind is a new strategy class and one line in :func:`strategy_for`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlbench.plugin.method import (
    GradientAggregator,
    LastLayerBayes,
    LossWeighting,
    MetaWeighting,
    Method,
    MultiSampleAggregator,
    SequentialGroups,
    SharpnessAware,
    StepInfo,
)
from mtlbench.plugin.model import MultiTaskModel
from mtlbench.train.conflict import ConflictRecorder, ReferenceConflict
from mtlbench.train.distributed import World
from mtlbench.train.gradients import assign_flat_grad, pullback_rows, task_gradients

Batch = Tensor | Mapping[str, Tensor]


class NonFiniteError(RuntimeError):
    """A loss or an update became NaN/Inf."""


def forward(model: Callable[[Any], dict[str, Tensor]], x: Batch) -> dict[str, Tensor]:
    """The model's outputs for a batch (``model`` a module, or any call of one). A multi-input
    batch (``{task: inputs}``) runs each sub-task's own inputs through the model separately and
    keeps that sub-task's output."""
    if isinstance(x, Mapping):
        return {t: model(inputs)[t] for t, inputs in x.items()}
    return model(x)


class ConflictProbe:
    """Conflict statistics at the sampled steps, in one place for every strategy: the task
    gradients of the updated (masked) shared parameters go to ``recorder``; the reference set's
    (:class:`ReferenceConflict`) to its own recorder: its own parameters' gradients (extra
    backward passes) or, where it is the shared parameters, their unmasked gradients. The time
    spent is summed in ``seconds`` (excluded from the step time)."""

    def __init__(
        self,
        recorder: ConflictRecorder,
        reference: ReferenceConflict | None,
        mask: Callable[[Tensor], Tensor],
        world: World | None = None,
    ):
        self.recorder, self.reference, self.mask, self.world = recorder, reference, mask, world
        self.step, self.due, self.seconds = 0, False, 0.0

    def begin(self, step: int, losses: Tensor) -> None:
        """Start a step: decide whether it is sampled; on a sampled step the reference set's own
        gradients are taken now, before a strategy frees the graph."""
        self.step, self.due, self.seconds = step, self.recorder.due(step), 0.0
        if self.due and self.reference is not None and self.reference.per_task is not None:
            t0 = time.perf_counter()
            rows = self.reference.gradients(list(losses))
            if self.world is not None:  # the global batch's gradients, as every other matrix
                rows = self.world.average([rows])[0]
            self.reference.recorder.record(step, rows)
            self.seconds += time.perf_counter() - t0

    @property
    def _unmasked(self) -> ConflictRecorder | None:
        ref = self.reference
        return ref.recorder if ref is not None and ref.per_task is None else None

    def record(
        self,
        raw: Tensor,
        masked: Tensor | None = None,
        rep: Tensor | None = None,
        shared: Sequence[nn.Parameter] = (),
        average: bool = False,
    ) -> None:
        """Record a sampled step's unmasked (T, P) task gradients of the shared parameters
        (``masked``: the same after the mask, where the strategy has it already; ``rep``: they are
        the representation's, pulled back to the shared parameters first; ``average``: then
        averaged over the ranks of a run over several processes)."""
        if not self.due:
            return
        t0 = time.perf_counter()
        if rep is not None:
            raw = pullback_rows(rep, raw, list(shared))
            if average and self.world is not None:
                raw = self.world.average([raw])[0]
        self.recorder.record(self.step, self.mask(raw) if masked is None else masked)
        if self._unmasked is not None:
            self._unmasked.record(self.step, raw)
        self.seconds += time.perf_counter() - t0


@dataclass
class StepInputs:
    """What a strategy that runs the model again needs beyond the losses (``needs_inputs``): the
    model, its optimiser (learning rate, momentum buffers, weight decay of a virtual step), the
    task losses of a batch's outputs, the step's training batch (inputs, targets), for a
    look-ahead its meta batch, and the trainer's own update (``apply``: the mitigation's mask,
    clipping and the optimiser's step on the current ``.grad``) for methods that update several
    times a step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    losses_of: Callable[[dict[str, Tensor], Mapping[str, Tensor]], Tensor]
    train: tuple[Batch, Mapping[str, Tensor]]
    meta: tuple[Batch, Mapping[str, Tensor]] | None = None
    apply: Callable[[], None] | None = None
    tasks: Sequence[str] = ()  # the sub-tasks in the order of the losses
    likelihoods: Sequence[str | None] = ()  # each sub-task's, as its task declares (Task.likelihoods)


@dataclass
class StepContext:
    """What a strategy needs besides the losses: the shared parameters, each task's head
    parameters, how per-task gradients are computed (``gradients``: strategy and chunk size),
    the mitigation's mask of shared task gradients (identity without one) and the probe;
    ``inputs`` only for a strategy that ``needs_inputs`` (set by the trainer each step)."""

    shared: list[nn.Parameter]
    heads: list[list[nn.Parameter]]
    gradients: tuple[str, int]
    mask: Callable[[Tensor], Tensor]
    probe: ConflictProbe
    inputs: StepInputs | None = None
    world: World | None = None  # a run over several processes (mtlbench.train.distributed)

    def task_gradients(
        self, losses: Tensor, params: Sequence[Tensor], heads: bool = True, average: bool = True, **kwargs: Any
    ) -> Any:
        """The (T, P) gradients of ``params`` and each head's, those of the global batch in a
        run over several processes (averaged over ranks; ``average=False`` keeps the matrix this
        rank's, e.g. per-sample representation gradients, which are gathered instead)."""
        rows, private = task_gradients(
            list(losses), list(params), self.heads if heads else None,
            strategy=self.gradients[0], chunk_size=self.gradients[1], **kwargs,
        )  # fmt: skip
        if self.world is not None:
            flat = [g for ps in private for g in ps]
            reduced = self.world.average(([rows] if average else []) + flat)
            if average:
                rows, reduced = reduced[0], reduced[1:]
            it = iter(reduced)
            private = [[next(it) for _ in ps] for ps in private]
        return rows, private


def _record_plain_gradients(losses: Tensor, ctx: StepContext) -> None:
    """On a sampled step, the task gradients of the shared parameters at the current weights,
    for the statistics only (a strategy whose update never forms them; the graph is kept)."""
    if ctx.probe.due:
        t0 = time.perf_counter()
        raw = ctx.task_gradients(losses, ctx.shared, heads=False, retain_graph=True)[0]
        ctx.probe.seconds += time.perf_counter() - t0
        ctx.probe.record(raw)


def _check_update(update: Tensor, method: Method, step: int) -> None:
    if not torch.isfinite(update).all():
        raise NonFiniteError(f"non-finite update from method {method.name!r} at step {step}")


def _set_head_grads(heads: list[list[nn.Parameter]], grads: Sequence[Sequence[Tensor]], weights: Tensor | None) -> None:
    for i, (ps, gs) in enumerate(zip(heads, grads)):
        for p, g in zip(ps, gs):
            p.grad = g if weights is None else g * weights[i].to(g.dtype)


class UpdateStrategy:
    """One method kind's way from losses to gradients (see the module docstring)."""

    samples_per_step = 1  # training batches each step draws
    needs_inputs = False  # runs the model again: the trainer sets ``StepContext.inputs`` each step
    # the gradients it leaves are the global batch's on every rank (computed from averaged
    # matrices); otherwise the trainer averages every parameter's gradient over the ranks
    global_gradients = False

    def __init__(self, method: Method | None) -> None:
        self.method = method

    def layer_sizes(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """The layer sizes a method sees in its StepInfo (of its gradient matrix's columns)."""
        return sizes

    def outputs(self, model: MultiTaskModel, x: Batch) -> dict[str, Tensor]:
        return forward(model, x)

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        """Fill ``.grad`` from ``losses`` (one (T,) tensor per batch of the step)."""
        raise NotImplementedError

    @staticmethod
    def _one(losses: list[Tensor]) -> Tensor:
        if len(losses) != 1:
            raise TypeError("one loss vector per step: only multi-sample methods take several")
        return losses[0]


class SumOfLosses(UpdateStrategy):
    """No method: the backward of the sum of the task losses."""

    def objective(self, losses: Tensor, info: StepInfo) -> Tensor:
        return losses.sum()

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        _record_plain_gradients(vector, ctx)
        total = self.objective(vector, info)
        if not torch.isfinite(total):
            raise NonFiniteError(f"non-finite objective from method {getattr(self.method, 'name', 'sum')!r} at step {info.step}")
        total.backward()


class WeightedLoss(SumOfLosses):
    """``LossWeighting``: the backward of the method's objective."""

    method: LossWeighting

    def objective(self, losses: Tensor, info: StepInfo) -> Tensor:
        return self.method.loss(losses, info)


class ParameterGradients(UpdateStrategy):
    """``GradientAggregator`` on the shared parameters' (T, P) gradient matrix."""

    method: GradientAggregator
    global_gradients = True

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        raw, private = ctx.task_gradients(vector, ctx.shared)
        grads = ctx.mask(raw)
        ctx.probe.record(raw, masked=grads)
        update = self.method.aggregate(grads, vector.detach(), info)
        _check_update(update, self.method, info.step)
        assign_flat_grad(ctx.shared, update)
        _set_head_grads(ctx.heads, private, self.method.head_weights())


class RepresentationGradients(UpdateStrategy):
    """``GradientAggregator`` on the shared representation: the forward is cut at ``z``; the
    method aggregates the (T, N x D) gradients of its detached copy, and its update is
    back-propagated through the trunk. (Conflict statistics stay on parameter gradients: on
    sampled steps the rows are pulled back to the shared parameters.)"""

    method: GradientAggregator

    def __init__(self, method: GradientAggregator) -> None:
        super().__init__(method)
        self._cut: tuple[Tensor, Tensor] | None = None

    def layer_sizes(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        return ()

    def outputs(self, model: MultiTaskModel, x: Batch) -> dict[str, Tensor]:
        if isinstance(x, Mapping):
            raise ValueError(
                "representation-gradient methods need one shared representation per batch; a multi-input "
                "task gives each sub-task its own inputs: use a method that works on parameter gradients"
            )
        z = model.encode(x)
        rep = z.detach().requires_grad_()
        self._cut = (z, rep)
        return model.decode(rep)

    def take_cut(self) -> tuple[Tensor, Tensor]:
        """The representation and its detached copy from :meth:`outputs` (taken once)."""
        if self._cut is None:
            raise RuntimeError(f"{type(self).__name__}: outputs() must run before fill_gradients()")
        cut, self._cut = self._cut, None
        return cut

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        z, rep = self.take_cut()
        world = ctx.world
        raw, private = ctx.task_gradients(vector, [rep], average=False)
        # several processes: the method sees the whole batch's rows (the ranks' blocks); the
        # statistics pull each rank's block back to the shared parameters and average them
        rows = raw if world is None else world.gather_rows(raw, rep[0].numel())
        ctx.probe.record(raw, rep=z, shared=ctx.shared, average=world is not None)
        update = self.method.aggregate(rows, vector.detach(), info)
        _check_update(update, self.method, info.step)
        mine = update if world is None else world.my_rows(update) * world.size  # the ranks' gradients are averaged
        z.backward(mine.view_as(z))
        _set_head_grads(ctx.heads, private, self.method.head_weights())


class LastLayerGradients(RepresentationGradients):
    """``LastLayerBayes`` (BayesAgg-MTL): the forward is cut at the representation as for
    :class:`RepresentationGradients`; each head gets the gradient of its own loss; the method
    sees every step's representation and targets (:meth:`LastLayerBayes.collect`) and returns the
    representation's gradient from the heads' weights (``None``: the sum of the task gradients,
    e.g. while it warms up), which is back-propagated through the trunk."""

    method: LastLayerBayes
    needs_inputs = True

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        z, rep = self.take_cut()
        method, io = self.method, _inputs(ctx, self.method)
        layers = []
        for name, params in zip(io.tasks, ctx.heads):
            if (
                len(params) != 2
                or params[0].dim() != 2
                or params[1].shape != params[0].shape[:1]
                or params[0].shape[1] != rep[0].numel()
            ):
                raise ValueError(
                    f"{method.name}: the head of task {name!r} is not one linear layer with a bias on the shared "
                    f"representation ({rep[0].numel()} features); use a task whose heads are nn.Linear(features, outputs)"
                )
            layers.append((params[0].detach(), params[1].detach()))
        likelihoods = list(io.likelihoods)
        missing = [t for t, kind in zip(io.tasks, likelihoods) if kind is None]
        if missing:
            raise ValueError(
                f"{method.name}: the task declares no likelihood for {missing} (Task.likelihoods): the posterior "
                "over a head needs the loss's likelihood; declare it in the task file or use another method"
            )
        raw, private = ctx.task_gradients(vector, [rep])
        ctx.probe.record(raw, rep=z, shared=ctx.shared)
        _set_head_grads(ctx.heads, private, None)
        features = rep.detach().reshape(rep.shape[0], -1)
        _, y = io.train
        targets = [y[t] for t in io.tasks]
        method.collect(features, targets, info)
        update = method.representation_update(features, layers, targets, [str(k) for k in likelihoods], info)
        update = raw.sum(0) if update is None else update.reshape(-1)
        _check_update(update, method, info.step)
        z.backward(update.to(z.dtype).view_as(z))


class MultiSample(UpdateStrategy):
    """``MultiSampleAggregator``: ``samples_per_step`` batches, one (T, P) matrix each; the
    conflict statistics see the first batch's; each head gets the sum (or mean) of its task's
    gradients over the batches, then the method's head weights."""

    method: MultiSampleAggregator
    global_gradients = True

    def __init__(self, method: MultiSampleAggregator) -> None:
        super().__init__(method)
        self.samples_per_step = method.samples_per_step

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        method = self.method
        if len(losses) != method.samples_per_step:
            raise ValueError(f"{method.name} needs {method.samples_per_step} loss vectors, got {len(losses)}")
        per_sample = [ctx.task_gradients(row, ctx.shared) for row in losses]
        grads = torch.stack([ctx.mask(g) for g, _ in per_sample])
        ctx.probe.record(per_sample[0][0], masked=grads[0])
        update = method.aggregate_samples(grads, torch.stack([row.detach() for row in losses]), info)
        _check_update(update, method, info.step)
        assign_flat_grad(ctx.shared, update)
        scale = 1.0 / len(per_sample) if method.head_samples == "mean" else 1.0
        summed = [
            [torch.stack([private[i][k] for _, private in per_sample]).sum(dim=0) * scale for k in range(len(ps))]
            for i, ps in enumerate(ctx.heads)
        ]
        _set_head_grads(ctx.heads, summed, method.head_weights())


class LookAhead(WeightedLoss):
    """``MetaWeighting`` (Auto-Lambda): first the meta-gradient of the weights from a virtual
    step (see :class:`mtlbench.plugin.method.MetaWeighting`), then the backward of the weighted
    objective with the updated weights. As in the reference, the training batch runs forward
    four times in training mode (the trainer's forward gives the virtual step's gradient, then
    theta + eps d, theta - eps d, and the update's own forward at theta), so the batch-norm
    statistics see what the reference's do; the meta batch runs at the virtual parameters on a
    copy of the buffers (the real statistics never see it, as the reference's second model)."""

    method: MetaWeighting
    needs_inputs = True

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        io = _inputs(ctx, self.method)
        if io.meta is None:
            raise RuntimeError(f"{self.method.name}: a meta-weighting step needs the trainer's meta batch")
        self.method.meta_step(self.meta_gradient(vector, info, io), info)
        # the update's own forward (the reference's fourth of the training batch): the one behind
        # ``losses`` saw the parameters change in place at theta +- eps d
        x, y = io.train
        super().fill_gradients([io.losses_of(forward(io.model, x), y)], info, ctx)

    def meta_gradient(self, losses: Tensor, info: StepInfo, io: StepInputs) -> Tensor:
        model, group = io.model, io.optimizer.param_groups[0]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        weights = self.method.weights(losses.detach(), info).to(losses)
        grads = _grads((weights * losses).sum(), params)
        lr = float(group["lr"])
        with torch.no_grad():  # theta' = theta - lr (momentum + g + weight decay theta), as a plain SGD step
            virtual = {}
            for (name, p), g in zip(named, grads):
                buffer = io.optimizer.state.get(p, {}).get("momentum_buffer") if "momentum" in group else None
                m = buffer * group["momentum"] if buffer is not None else 0.0
                virtual[name] = (p - lr * (m + g + group.get("weight_decay", 0.0) * p)).requires_grad_()
        state = {**virtual, **{n: b.clone() for n, b in model.named_buffers()}}
        assert io.meta is not None
        x, y = io.meta
        outputs = forward(lambda inputs: torch.func.functional_call(model, state, (inputs,)), x)
        meta_loss = (self.method.meta_tasks().to(losses) * io.losses_of(outputs, y)).sum()
        direction = _grads(meta_loss, list(virtual.values()))
        norm = torch.cat([d.reshape(-1) for d in direction]).norm()
        if not norm > 0:  # the meta loss is flat at theta': no direction to differentiate along
            return torch.zeros_like(weights)
        eps = 0.01 / norm
        x, y = io.train
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            plus = io.losses_of(forward(model, x), y)
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            minus = io.losses_of(forward(model, x), y)
            for p, d in zip(params, direction):
                p.add_(eps * d)
        return -lr * (plus - minus) / (2 * eps)


class SharpnessAwareGradients(UpdateStrategy):
    """``SharpnessAware`` (SAMO): each task's gradient at weights perturbed along its own ascent
    direction (see :class:`mtlbench.plugin.method.SharpnessAware` for the rule), then the base
    method's update of that (T, P) matrix. Forward passes of the training batch per step: the
    trainer's, 2T in evaluation mode without gradients (the zeroth-order estimates) and T in
    training mode with a backward each (the perturbed gradients; batch-norm running statistics
    are left as they were, as the reference's momentum 0 leaves them). Conflict statistics see
    the task gradients at the unperturbed weights (taken on sampled steps only, outside the step
    time). With a mitigation that masks updates (ST), the perturbation is unmasked; the mask
    applies to the perturbed gradients before the base combines them."""

    method: SharpnessAware
    needs_inputs = True

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        _record_plain_gradients(vector, ctx)
        rows, heads = self.perturbed_gradients(vector, info, ctx)
        grads = ctx.mask(rows)
        update = self.method.aggregate(grads, vector.detach(), info)
        _check_update(update, self.method, info.step)
        assign_flat_grad(ctx.shared, update)
        _set_head_grads(ctx.heads, heads, self.method.head_weights())

    def perturbed_gradients(self, losses: Tensor, info: StepInfo, ctx: StepContext) -> tuple[Tensor, list[list[Tensor]]]:
        """Each task's gradient at its perturbed weights: the (T, P) matrix of the shared
        parameters' and each head's (frees the graph of ``losses``)."""
        method, io = self.method, _inputs(ctx, self.method)
        shared, heads, n = ctx.shared, ctx.heads, len(ctx.heads)
        flat_heads = [p for ps in heads for p in ps]
        mean = _grads(losses.mean(), list(shared) + flat_heads)
        g_shared, g_heads, offset = mean[: len(shared)], [], len(shared)
        for ps in heads:
            g_heads.append(mean[offset : offset + len(ps)])
            offset += len(ps)
        estimates = [self.zeroth_order(i, info, ctx, io) for i in range(n)]
        steps = [self._ascent(shared, self._mixed(g_shared, estimates[i])) + self._ascent(heads[i], g_heads[i]) for i in range(n)]
        theta_shared = [p.detach().clone() for p in shared]
        theta_heads = [[p.detach().clone() for p in ps] for ps in heads]
        rows, head_grads = [], []
        x, y = io.train
        with _frozen_running_stats(io.model):
            for i in range(n):
                with torch.no_grad():
                    for p, t, e in zip(list(shared) + list(heads[i]), theta_shared + theta_heads[i], steps[i]):
                        p.copy_(t + e)
                loss = io.losses_of(forward(io.model, x), y)[i]
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"non-finite loss of task {i} at perturbed weights, step {info.step} ({method.name})")
                grads = _grads(loss, list(shared) + list(heads[i]))
                rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
                head_grads.append(grads[len(shared) :])
                with torch.no_grad():
                    for p, t in zip(heads[i], theta_heads[i]):
                        p.copy_(t)
        with torch.no_grad():
            for p, t in zip(shared, theta_shared):
                p.copy_(t)
        return torch.stack(rows), head_grads

    def zeroth_order(self, task: int, info: StepInfo, ctx: StepContext, io: StepInputs) -> list[Tensor]:
        """Task ``task``'s two-point estimate of its shared gradient along one Gaussian
        direction z: (L(theta + eps z) - L(theta - eps z)) / (2 eps) z, evaluation mode."""
        shared, eps = ctx.shared, self.method.zo_eps
        z = self.method.directions(list(shared), info)
        theta = [p.detach().clone() for p in shared]
        x, y = io.train
        model, was_training = io.model, io.model.training
        model.eval()
        try:
            with torch.no_grad():
                values = []
                for scale in (1, -2):  # theta + eps z, then (theta + eps z) - 2 eps z
                    for p, d in zip(shared, z):
                        p.copy_(p + scale * d * eps)
                    values.append(io.losses_of(forward(model, x), y)[task])
                for p, t in zip(shared, theta):
                    p.copy_(t)
        finally:
            model.train(was_training)
        projected = (values[0] - values[1]) / (2 * eps)
        return [projected * d for d in z]

    def _mixed(self, g: list[Tensor], estimate: list[Tensor]) -> list[Tensor]:
        """m = (1 - beta) g + beta z, z per parameter tensor at the norm of g's (or raw)."""
        beta = self.method.beta
        if self.method.zo_scale == "raw":
            return [(1 - beta) * gp + beta * zp for gp, zp in zip(g, estimate)]
        out = []
        for gp, zp in zip(g, estimate):
            n1, n2 = gp.norm(p=2).item(), zp.norm(p=2).item()
            out.append((1 - beta) * gp + beta * n1 * (zp / n2) if n2 > 0 else (1 - beta) * gp)
        return out

    def _ascent(self, params: Sequence[Tensor], g: Sequence[Tensor]) -> list[Tensor]:
        """rho g / ||g|| over ``params`` (adaptive: rho p^2 g / ||p g||)."""
        adaptive, rho = self.method.adaptive, self.method.rho
        norms = [((p.detach().abs() * gp) if adaptive else gp).norm(p=2) for p, gp in zip(params, g)]
        if not norms:
            return []
        scale = (rho / (torch.norm(torch.stack(norms), p=2) + 1e-12)).item()
        return [((p.detach().pow(2) * gp) if adaptive else gp) * scale for p, gp in zip(params, g)]


class GroupSequential(UpdateStrategy):
    """``SequentialGroups``: the step's groups (:meth:`SequentialGroups.plan`) are updated in
    turn, each by the backward of the sum of its tasks' losses; every group but the last is
    applied here through the trainer's own update, and a fresh forward pass of the same batch
    gives the next group's losses (and, through :meth:`SequentialGroups.observe`, what the last
    update did to every task). The last group's gradient is left for the trainer's step.
    Conflict statistics see the task gradients at the step's start (sampled steps only)."""

    method: SequentialGroups
    needs_inputs = True

    def fill_gradients(self, losses: list[Tensor], info: StepInfo, ctx: StepContext) -> None:
        vector = self._one(losses)
        _record_plain_gradients(vector, ctx)
        io = _inputs(ctx, self.method)
        if io.apply is None:
            raise RuntimeError(f"{self.method.name}: updating several times a step needs the trainer's update")
        x, y = io.train
        for k, group in enumerate(self.method.plan(info)):
            if k > 0:
                io.apply()
                io.optimizer.zero_grad(set_to_none=True)
                vector = io.losses_of(forward(io.model, x), y)
                if not torch.isfinite(vector).all():
                    raise NonFiniteError(f"non-finite loss before group {group} at step {info.step} ({self.method.name})")
            self.method.observe(group, vector.detach(), info)
            torch.stack([vector[i] for i in group]).sum().backward()
            for i, params in enumerate(ctx.heads):  # the backward through the stacked losses gave
                if i not in group:  # other tasks' heads zero gradients: none, so the optimiser skips them
                    for p in params:
                        p.grad = None


class _frozen_running_stats:
    """Batch-norm layers keep their running statistics (momentum 0, as the SAMO reference sets
    it for its perturbed passes), restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.layers]
        for m in self.layers:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.layers, self.saved):
            m.momentum = momentum


def _inputs(ctx: StepContext, method: Method) -> StepInputs:
    if ctx.inputs is None:
        raise RuntimeError(
            f"{getattr(method, 'name', method)}: this method runs the model again and needs the trainer's step inputs"
        )
    return ctx.inputs


def _grads(objective: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """d objective / d params, zeros for parameters it does not depend on."""
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def strategy_for(method: Method | None) -> UpdateStrategy:
    """The update strategy of ``method``'s kind (chosen once per run)."""
    if method is None:
        return SumOfLosses(None)
    if isinstance(method, MultiSampleAggregator):
        return MultiSample(method)
    if isinstance(method, SharpnessAware):
        return SharpnessAwareGradients(method)
    if isinstance(method, SequentialGroups):
        return GroupSequential(method)
    if isinstance(method, LastLayerBayes):
        return LastLayerGradients(method)
    if isinstance(method, GradientAggregator):
        return RepresentationGradients(method) if method.gradients == "representation" else ParameterGradients(method)
    if isinstance(method, MetaWeighting):
        return LookAhead(method)
    if isinstance(method, LossWeighting):
        return WeightedLoss(method)
    name, kind = getattr(method, "name", method), getattr(method, "kind", None)
    raise TypeError(f"method {name!r} of kind {kind!r} has no update strategy")


def backward_update(
    method: Method | None,
    losses: Tensor | list[Tensor],
    info: StepInfo,
    shared: list[nn.Parameter],
    head_params: list[list[nn.Parameter]],
    recorder: ConflictRecorder,
    gradients: tuple[str, int],
    mask: Callable[[Tensor], Tensor] | None = None,
    reference: ReferenceConflict | None = None,
) -> float:
    """One step's gradients outside a trainer (tests, benchmarks): ``losses`` one (T,) tensor,
    or a list of them for a multi-sample method, from outputs computed with ``forward`` (a
    representation-gradient method needs :meth:`UpdateStrategy.outputs`: use the strategy).
    Returns the seconds spent on conflict statistics."""
    strategy = strategy_for(method)
    if isinstance(strategy, RepresentationGradients):
        raise TypeError("representation-gradient methods cut the forward pass: use strategy_for(method).outputs()")
    rows = losses if isinstance(losses, list) else [losses]
    if isinstance(losses, list) and not isinstance(strategy, MultiSample):
        raise TypeError("one loss vector per step: only multi-sample methods take several")
    if isinstance(strategy, MultiSample) and not isinstance(losses, list):
        raise TypeError(
            f"{strategy.method.name} draws {strategy.samples_per_step} batches per step: pass one loss vector per batch"
        )
    identity = mask or (lambda g: g)
    probe = ConflictProbe(recorder, reference, identity)
    probe.begin(info.step, rows[0])
    strategy.fill_gradients(rows, info, StepContext(shared, head_params, gradients, identity, probe))
    return probe.seconds
