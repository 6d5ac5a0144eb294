"""The method extension point: loss weightings, gradient aggregators and the single-task
baseline (one file per method in ``baselines/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from mtlbench.core.registry import Plugin, keyword_defaults, wrapper_version
from mtlbench.plugin.solvers import combine, gram_matrix

METHOD_KINDS = ("weighting", "gradient", "sequential", "single_task")
GRADIENT_TARGETS = ("parameters", "representation")
# What the engine may use a method for; declared on the class (``roles = frozenset({...})``).
METHOD_ROLES = {
    "baseline": "the single-task baseline Δm is measured against",
    "reference": "the reference row of the leaderboard's significance tests",
    "front": "a fixed-weight scalarisation: its runs trace the reference front of trade-off plots",
}


# What a method guarantees on every gradient matrix (declared on the class, checked by the
# property tests over many seeded matrices, hard ones included).
METHOD_PROPERTIES = {
    "non_conflicting": "the update never conflicts with a task gradient: G d >= 0",
    "non_conflicting_if_independent": "G d >= 0 when the task gradients are linearly independent",
    "permutation_invariant": "permuting the tasks does not change the update",
    "linear_under_scaling": "scaling every gradient by c > 0 scales the update by c",
    "scale_invariant": "scaling every gradient by c > 0 leaves the update unchanged",
    "may_raise_on_dependent": "raises NoSolutionError when the gradients are linearly dependent or a gradient is zero",
}


@dataclass(frozen=True)
class ReferenceMatch:
    """How a method's output relates to a reference implementation's on the same gradients,
    as data the record test (tests/test_reference_records.py) checks against the reference's
    recorded outputs.

    ``options`` maps each of our options to the reference's parameter (and, where the values
    differ in kind, a map of its values); ``scale``: ours = scale x the reference's (a number,
    or ``"T"`` for the number of tasks: references differ by summing or averaging);
    ``rtol``/``atol``: the agreement asserted, on the update as a vector
    (||ours - theirs|| <= rtol ||theirs|| + atol); ``differences``: each known difference, named
    (``random-order``: the task order is drawn from our generator, the reference's from
    Python's ``random``; ``random-draw``: random numbers come from our seeded generator;
    ``solver``: the reference stops its iterative solver early, hence the tolerance), each with
    the reason; ``known_cases``: the reference records (by case name) where the outputs differ
    on purpose, each with the reason — "no solution" when we raise ``NoSolutionError`` there."""

    source: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: float | str = 1.0
    rtol: float = 1e-7
    atol: float = 1e-10
    differences: dict[str, str] = field(default_factory=dict)
    known_cases: dict[str, str] = field(default_factory=dict)


@dataclass
class StepInfo:
    """What a method may know about the current step.

    ``generator`` is the method's own seeded random generator: use it (never the global RNG)
    for anything random, so runs are reproducible and resumable.
    """

    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int
    generator: torch.Generator = field(repr=False, default_factory=torch.Generator)
    layer_sizes: tuple[int, ...] = ()  # column blocks of the (T, P) gradient matrix, one per shared layer


class Method(nn.Module, Plugin):
    """Base class of every method. A method is an ``nn.Module`` so it can own parameters
    (trained by the cell's optimiser) and state (saved with ``state_dict``).

    Class attributes: ``name`` (registry key), ``version`` (bump it with every change that can
    change a result), ``kind``, ``description`` (one line), ``citation`` (the paper),
    ``reference`` (the implementation matched) and ``roles`` (see :data:`METHOD_ROLES`).
    Options are the keyword arguments of ``__init__`` after ``n_tasks``.

    Keep every piece of state in buffers or parameters (a checkpoint saves ``state_dict()``).
    A buffer whose size is known only at the first step (e.g. a (T, P) gradient average) can be
    registered empty (``torch.empty(0)``) and replaced later: loading a state dict resizes it.

    Optional hooks the trainer honours:

    - ``max_norm`` (instance attribute, default 0 = off): after the method's update is written
      into the shared parameters' gradients, clip their global norm to ``max_norm`` (as the
      nash-mtl and FAMO references do).
    - ``wants_losses_after_step = True`` with :meth:`after_step`: after the optimiser step the
      trainer recomputes the task losses on the same batch (no gradient, model mode unchanged)
      and passes them in (FAMO's update rule).
    """

    kind: ClassVar[str]
    ROLES: ClassVar[dict[str, str]] = dict(METHOD_ROLES)
    properties: ClassVar[frozenset[str]] = frozenset()  # see METHOD_PROPERTIES; with the default options
    matches: ClassVar[tuple[ReferenceMatch, ...]] = ()  # references whose outputs the tests compare
    wants_losses_after_step: ClassVar[bool] = False

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.max_norm = 0.0

    def after_step(self, losses: Tensor, info: StepInfo) -> None:
        """Called after the optimiser step with the losses of the same batch (see class doc)."""

    @classmethod
    def properties_for(cls, options: Mapping[str, Any]) -> frozenset[str]:
        """What the method guarantees with these options (names of :data:`METHOD_PROPERTIES`);
        by default ``properties``, declared for every option. A method whose options change a
        guarantee (MGDA's gradient normalisation) says so here; the property tests check each
        option set against what this returns."""
        return cls.properties

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for name, buf in self._buffers.items():  # lazily sized buffers take the saved shape
            saved = state_dict.get(prefix + name)
            if buf is not None and buf.numel() == 0 and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty_like(saved, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return keyword_defaults(cls.__init__, skip=("self", "n_tasks"))

    @classmethod
    def plugin_errors(cls) -> list[str]:
        if getattr(cls, "kind", None) not in METHOD_KINDS:
            return [
                f"must subclass LossWeighting, GradientAggregator, SequentialGroups or SingleTask (kind is "
                f"{getattr(cls, 'kind', None)!r}; valid kinds: {', '.join(METHOD_KINDS)})"
            ]
        unknown = sorted(set(cls.properties) - set(METHOD_PROPERTIES))
        if unknown:
            return [f"unknown properties {unknown}; valid: {', '.join(METHOD_PROPERTIES)}"]
        if cls.kind == "gradient" and getattr(cls, "gradients", None) not in GRADIENT_TARGETS:
            return [f"gradients = {getattr(cls, 'gradients', None)!r}; valid: {', '.join(GRADIENT_TARGETS)}"]
        return []


class LossWeighting(Method):
    """Task losses (T,) -> task weights (T,). The trainer back-propagates ``loss()``."""

    kind: ClassVar[str] = "weighting"

    def weights(self, losses: Tensor, info: StepInfo) -> Tensor:
        raise NotImplementedError

    def loss(self, losses: Tensor, info: StepInfo) -> Tensor:
        """The scalar to back-propagate; override when weights carry their own graph (UW)."""
        return (self.weights(losses.detach(), info) * losses).sum()


class MetaWeighting(LossWeighting):
    """A loss weighting whose weights are learned by a look-ahead (Auto-Lambda's meta-gradient).

    Each step the trainer also draws a *meta batch* from an independent shuffled pass over the
    training split. Before the model's update, the strategy (``LookAhead``) takes one virtual
    step of the model on the weighted training loss (the optimiser's learning rate, momentum
    and weight decay, as a plain SGD step), computes the gradient ``d`` of the meta batch's
    loss over the tasks of :meth:`meta_tasks` at the virtual parameters, and approximates the
    meta-gradient of the weights by finite differences of the training losses at
    theta +- eps d (eps = 0.01 / ||d||): ``-lr (L(theta + eps d) - L(theta - eps d)) / (2 eps)``.
    :meth:`meta_step` applies it; the model then trains on :meth:`loss` with the new weights."""

    def meta_tasks(self) -> Tensor:
        """(T,) 0/1: the tasks whose meta-batch loss is the meta objective (all, in multi-task learning)."""
        return torch.ones(self.n_tasks)

    def meta_step(self, grad: Tensor, info: StepInfo) -> None:
        """Update the weights with the meta-gradient ``grad`` (T,)."""
        raise NotImplementedError


class GradientAggregator(Method):
    """Per-task gradients of the shared parameters (T, P) -> one update direction (P,).

    Heads receive the gradient of their own task's loss. The trainer computes the (T, P)
    matrix only for methods of this kind (or when sampling conflict statistics).

    ``gradients = "representation"`` asks instead for the gradients w.r.t. the shared
    representation (the trunk's output for the whole batch, flattened: P = batch x features),
    as MGDA-UB does; the trainer back-propagates the returned vector through the trunk. This
    needs a model that exposes ``encode``/``decode`` (hard sharing does).
    """

    kind: ClassVar[str] = "gradient"
    gradients: ClassVar[str] = "parameters"  # parameters | representation

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        raise NotImplementedError

    def head_weights(self) -> Tensor | None:
        """Weights (T,) for the heads' gradients after :meth:`aggregate`; None (the default):
        each head gets its own task's gradient unweighted. A method that minimises a weighted
        loss sum_i w_i L_i (ExcessMTL) returns its w here, so the heads see what the weighted
        loss gives them."""
        return None


class GramWeighting(GradientAggregator):
    """A gradient method whose update is a weighting of the task gradients computed from their
    Gram matrix: d = w(K)^T G with K = G G^T (T x T, float64). A subclass implements only its
    weighting rule, :meth:`gram_weights`; the (T, P) matrix is read twice (K, then the
    combination), so the cost does not depend on the rule. ``grad_dtype`` is the dtype of the
    gradients K was made from, for rules whose rank decisions depend on their precision
    (:func:`mtlbench.plugin.solvers.gram_pinv`); the combination is accumulated in float64 when
    it cancels (:func:`mtlbench.plugin.solvers.combine`)."""

    grad_dtype: torch.dtype = torch.float64

    def gram_weights(self, gram: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        """(T, T) Gram matrix (float64) -> (T,) weights of the task gradients."""
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        self.grad_dtype = grads.dtype
        gram = gram_matrix(grads)
        return combine(self.gram_weights(gram, losses, info), grads, gram)


class MultiSampleAggregator(GradientAggregator):
    """A gradient method that needs several independent batches per step (stochastic
    multi-objective methods: one batch's gradients decide the weights, another's are combined,
    so the weight estimate is not correlated with the gradients it weights).

    Each step the trainer draws ``samples_per_step`` training batches (the training data
    cycled, so an epoch keeps its number of steps and each step sees that many batches, as
    LibMTL's trainer does), computes the (S, T, P) per-task gradients and the (S, T) losses,
    and calls :meth:`aggregate_samples`. The heads receive the gradients of all S batches,
    summed (``head_samples = "sum"``) or averaged (``"mean"``), then :meth:`head_weights`.
    Parameter gradients only (``gradients = "parameters"``)."""

    samples_per_step: ClassVar[int] = 3
    head_samples: ClassVar[str] = "mean"  # sum | mean

    def aggregate_samples(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        """(S, T, P) per-task gradients of S independent batches and their (S, T) losses ->
        the update (P,)."""
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        """The update when every sample is the same batch (``grads`` repeated S times): what
        the method does with one gradient matrix. The trainer always passes S independent
        batches to :meth:`aggregate_samples`."""
        s = self.samples_per_step
        return self.aggregate_samples(grads.expand(s, *grads.shape), losses.expand(s, *losses.shape), info)

    @classmethod
    def plugin_errors(cls) -> list[str]:
        errors = super().plugin_errors()
        if cls.gradients != "parameters":
            errors.append("a multi-sample method works on parameter gradients (gradients = 'parameters')")
        if cls.head_samples not in ("sum", "mean") or cls.samples_per_step < 2:
            errors.append(
                f"head_samples must be 'sum' or 'mean' and samples_per_step >= 2 "
                f"(got {cls.head_samples!r}, {cls.samples_per_step})"
            )
        return errors


ZO_SCALES = ("per_tensor", "raw")


class SharpnessAware(GradientAggregator):
    """A gradient method applied to sharpness-aware task gradients (SAMO's joint global/local
    perturbation). The method wraps a *base* method (option ``base``, a method name; the engine
    builds it with its default options, :func:`build_method`), and each step the strategy
    (``SharpnessAwareGradients``) replaces every task's gradient by its gradient at perturbed
    weights before the base combines them:

    1. g: the gradient of the mean task loss (shared parameters and heads);
    2. for each task, a zeroth-order estimate of its gradient on the shared parameters: one
       Gaussian direction z, (L_i(theta + eps z) - L_i(theta - eps z)) / (2 eps) z, the model in
       evaluation mode (``zo_eps``);
    3. task i's perturbation: its head moves by rho g_head_i / ||g_head_i||, the shared parameters
       by rho m_i / ||m_i|| with m_i = (1 - beta) g + beta z_i, z_i the estimate rescaled per
       parameter tensor to the norm of g's (``zo_scale = "per_tensor"``) or as it is (``"raw"``);
       ``adaptive``: the ASAM form (norms of |p| g, steps p^2 g);
    4. task i's gradient at the perturbed weights (training mode, batch-norm running statistics
       unchanged): its row of the (T, P) matrix the base aggregates, and its head's gradient.

    Heads get their task's perturbed gradient, times the base's head weights (a loss-weighting
    base: its weights). The base's gradient clipping (``max_norm``) applies to the update."""

    wraps_base: ClassVar[bool] = True

    def __init__(
        self,
        n_tasks: int,
        base: Method | str,
        rho: float,
        beta: float,
        zo_eps: float,
        adaptive: bool = False,
        zo_scale: str = "per_tensor",
    ) -> None:
        super().__init__(n_tasks)
        name = getattr(self, "name", type(self).__name__)
        if isinstance(base, str):
            raise TypeError(
                f"{name}: base={base!r} names a method; the engine builds it (mtlbench.plugin.method.build_method "
                "builds a wrapper and its base from a method registry)"
            )
        if not (rho >= 0 and 0 <= beta <= 1 and zo_eps > 0):
            raise ValueError(f"{name}: need rho >= 0, 0 <= beta <= 1 and zo_eps > 0; got rho={rho}, beta={beta}, zo_eps={zo_eps}")
        if zo_scale not in ZO_SCALES:
            raise ValueError(f"{name}: zo_scale={zo_scale!r}; valid: {', '.join(ZO_SCALES)}")
        problem = _base_problem(base)
        if problem:
            raise ValueError(f"{name}: base {getattr(base, 'name', base)!r} {problem}")
        self.base = base
        self.rho, self.beta, self.zo_eps, self.adaptive, self.zo_scale = rho, beta, zo_eps, adaptive, zo_scale
        self.max_norm = base.max_norm
        self._weights: Tensor | None = None

    def directions(self, params: list[Tensor], info: StepInfo) -> list[Tensor]:
        """One Gaussian direction for the zeroth-order estimate: a N(0, 1) tensor per shared
        parameter, from the method's generator."""
        return [torch.normal(0.0, 1.0, size=tuple(p.shape), generator=info.generator).to(p) for p in params]

    def aggregate(self, grads: Tensor, losses: Tensor, info: StepInfo) -> Tensor:
        if isinstance(self.base, GradientAggregator):
            return self.base.aggregate(grads, losses, info)
        assert isinstance(self.base, LossWeighting)
        weights = self.base.weights(losses, info)
        self._weights = weights
        return combine(weights, grads, gram_matrix(grads))

    def head_weights(self) -> Tensor | None:
        if isinstance(self.base, GradientAggregator):
            return self.base.head_weights()
        return self._weights


def _base_problem(base: Method) -> str | None:
    """Why ``base`` cannot be a sharpness-aware method's base, or None."""
    if isinstance(base, SharpnessAware):
        return "is itself a wrapper"
    if isinstance(base, MultiSampleAggregator) or getattr(base, "gradients", "parameters") != "parameters":
        return "needs other gradients (several batches, or the representation's); use a method on one (T, P) matrix"
    if isinstance(base, MetaWeighting) or base.wants_losses_after_step:
        return "needs more than one gradient matrix per step (a look-ahead or the losses after the step)"
    if isinstance(base, LossWeighting) and type(base).loss is not LossWeighting.loss:
        return (
            "weights the losses through its own graph (learned log-variances): its weights are not a function of the losses alone"
        )
    if not isinstance(base, (GradientAggregator, LossWeighting)):
        return f"is of kind {base.kind!r}; use a gradient method or a loss weighting"
    return None


def build_method(
    methods: Mapping[str, type[Method]], name: str, n_tasks: int, options: Mapping[str, Any] | None = None
) -> Method:
    """The method ``name`` of the registry ``methods`` with ``options``; a wrapper
    (:class:`SharpnessAware`) gets its base, named by its ``base`` option, built first."""
    cls = methods[name]
    opts = dict(options or {})
    if getattr(cls, "wraps_base", False):
        base = opts.get("base", cls.option_defaults().get("base"))
        if not isinstance(base, str) or base not in methods:
            raise ValueError(f"{name}: base={base!r} is not a method; valid: {', '.join(sorted(methods))}")
        opts["base"] = build_method(methods, base, n_tasks)
    return cls(n_tasks=n_tasks, **opts)


def method_version(methods: Mapping[str, type[Method]], name: str, options: Mapping[str, Any] | None = None) -> str:
    """The version a cell records for method ``name``: its own, and a wrapper's base's after a
    ``+`` (a new version of the base makes the wrapper's results stale too)."""
    cls = methods[name]
    version = str(cls.version)
    if getattr(cls, "wraps_base", False):
        base = dict(options or {}).get("base", cls.option_defaults().get("base"))
        if isinstance(base, str) and base in methods:
            version = wrapper_version(version, base, method_version(methods, base))
    return version


class LastLayerBayes(GradientAggregator):
    """A representation-gradient method that also sees each task's last layer and targets
    (BayesAgg-MTL: a posterior over every head's weights makes each task's gradient of the
    representation a random variable, whose mean and variance the method combines). Every
    task's head must be one linear layer with a bias on the shared representation, and the task
    must declare each sub-task's likelihood (``Task.likelihoods``).

    The strategy (``LastLayerGradients``) cuts the forward pass at the representation, gives each
    head the gradient of its own loss, passes every step's representation and targets to
    :meth:`collect` (a method that conditions on the whole training set keeps the last epoch's),
    and back-propagates :meth:`representation_update`'s (N, D) gradient through the trunk."""

    gradients: ClassVar[str] = "representation"

    def collect(self, features: Tensor, targets: list[Tensor], info: StepInfo) -> None:
        """A training batch's (N, D) representation and each task's targets, every step."""

    def representation_update(
        self, features: Tensor, layers: list[tuple[Tensor, Tensor]], targets: list[Tensor], likelihoods: list[str], info: StepInfo
    ) -> Tensor | None:
        """The (N, D) gradient of the representation from its (N, D) value, each task's last
        layer (weight (C, D), bias (C,)), targets and likelihood; None: the sum of the task
        gradients (what the backward of the summed losses gives)."""
        raise NotImplementedError


class SequentialGroups(Method):
    """Tasks in groups, each group updated in turn within a training step: one optimiser step
    per group on the sum of its tasks' losses, each after a fresh forward pass of the same batch
    (Selective Task Group Updates). The strategy (``GroupSequential``) asks :meth:`plan` for the
    step's groups in their order (lists of task indices; a group may come twice), and before
    each group's update passes the task losses at the current weights to :meth:`observe` (the
    method's bookkeeping of how one group's update moved every task's loss). Every update goes
    through the trainer's own step (the mitigation's mask, gradient clipping, the optimiser);
    parameters the group's loss does not reach (other tasks' heads) get no gradient, so the
    optimiser leaves them alone."""

    kind: ClassVar[str] = "sequential"

    def plan(self, info: StepInfo) -> list[list[int]]:
        """The groups to update this step, in order (task indices)."""
        raise NotImplementedError

    def observe(self, group: list[int], losses: Tensor, info: StepInfo) -> None:
        """The (T,) task losses at the weights ``group``'s update is about to start from."""


class SingleTask(Method):
    """Marker kind: train one independent model per sub-task (the Δm baseline)."""

    kind: ClassVar[str] = "single_task"
