"""Task-specific copies of shared layers: the surgery Recon performs, as models offer it.

A model declares which sub-networks may be branched (:meth:`MultiTaskModel.surgery_parts`) and
builds its branched form (:meth:`MultiTaskModel.branch_layers`); this module holds the parts both
need. :class:`BranchedModel` is a hard-sharing model's branched form; SegNet-MTAN's lives with
SegNet-MTAN (``mtlbench/backbones/segnet.py``).

Routing. After surgery the trunk processes T stacked copies of the batch (one stream per task):
a branched layer applies copy t to stream t; a shared layer runs once per stream (batch-norm
layers normalise each stream separately, with their own running statistics per stream, so a
stream sees exactly what a separate per-task forward pass would, in training and in eval mode;
Recon version 1 kept one blended set of running statistics, which cost a trained model 25 points
of eval-mode accuracy in a MultiMNIST check). This works for any trunk whose only batch-coupled
layers are batch norms (timm ResNets, ViTs, ConvNeXts ...). The layers before the first branched
layer run once on the batch (see :func:`split_point`); the streams split there. Leaf modules
owning parameters can be branched; parameters held by a container itself (a ViT's
cls_token/pos_embed, layer ``<root>``; the MPNN's ``conv`` bias) cannot. A batch of molecule
graphs stacks its own streams (``repeat_streams``: T copies of the disjoint graph) and runs
every stream from the input; a branched recurrent layer (the MPNN's GRU, Set2Set's LSTM:
sequence-first, streams on axis 1) runs each stream's input and hidden state through that
task's copy.

Initialisation of the copies (``init = "reinit"``) follows the network's ``init_style``
attribute: ``"kaiming"`` (the default: timm and Recon ResNets), ``"xavier"`` (SegNet and
SegNet-MTAN, MTAN's initialisation) or ``"default"`` (the MPNN: each layer's own PyTorch
initialiser); see :data:`INIT_RULES`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtlbench.plugin.model import HardSharingModel, MultiTaskModel, module_layers


def init_style(network: nn.Module) -> str:
    """How ``init = "reinit"`` re-draws a copy of ``network``'s layers (its ``init_style``
    attribute; ``"kaiming"`` when it declares none)."""
    return str(getattr(network, "init_style", None) or "kaiming")


class CurrentTask:
    """Which task's features a layer is processing, where a model runs its task branches one at a
    time (SegNet-MTAN's attention path); None: the input holds all T streams stacked."""

    def __init__(self) -> None:
        self.task: int | None = None


class TaskBranch(nn.Module):
    """One copy of a layer per task; the input holds the T task streams stacked on the batch axis
    (or, when ``current.task`` is set, one task's features: that task's copy applies)."""

    def __init__(self, module: nn.Module, n_tasks: int, current: CurrentTask | None = None) -> None:
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n_tasks))
        self.current = current

    def __getattr__(self, name: str) -> Any:
        """A plain setting of the layer (e.g. an LSTM's ``num_layers``, which Set2Set reads) from
        its first copy: the copies share every setting; their parameters stay on the copies."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            value = getattr(self._modules["copies"][0], name)  # type: ignore[index]
            if isinstance(value, (Tensor, nn.Module)):
                raise
            return value

    def forward(self, x: Tensor, *state: Any) -> Any:
        if self.current is not None and self.current.task is not None:
            return self.copies[self.current.task](x, *state)
        if isinstance(self.copies[0], nn.RNNBase) and not self.copies[0].batch_first:
            return self._recurrent(x, *state)
        streams = x.split(x.shape[0] // len(self.copies))
        return torch.cat([m(s) for m, s in zip(self.copies, streams)])

    def _recurrent(self, x: Tensor, *state: Any) -> tuple[Tensor, Any]:
        """A GRU/LSTM (sequence-first: the streams lie on axis 1 of the input and of the hidden
        state) applied per stream by its own copy."""
        n = len(self.copies)

        def split(t: Tensor) -> tuple[Tensor, ...]:
            return t.split(t.shape[1] // n, dim=1)

        inputs = split(x)
        if state and state[0] is not None:
            hidden = state[0]
            per = list(zip(*(split(h) for h in hidden))) if isinstance(hidden, tuple) else [(h,) for h in split(hidden)]
        else:
            per = [()] * n
        outs, states = [], []
        for m, xs, hs in zip(self.copies, inputs, per):
            out, h = m(xs, (hs if len(hs) > 1 else hs[0]) if hs else None)
            outs.append(out)
            states.append(h)
        joined = (
            tuple(torch.cat(parts, dim=1) for parts in zip(*states)) if isinstance(states[0], tuple) else torch.cat(states, dim=1)
        )
        return torch.cat(outs, dim=1), joined


class PerStream(nn.Module):
    """A shared batch norm applied to each task stream separately: the affine parameters are
    shared (they stay one shared layer), the running statistics are one set per stream.

    Each stream t is normalised with its own batch statistics in training and its own running
    statistics in eval mode, exactly as the stream's own single-task network would be (version 1
    kept one set of running statistics that all T streams updated in turn, so in eval mode every
    stream was normalised with a blend of the others' statistics: a trained model lost 4-7
    accuracy points in eval mode on MultiMNIST)."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, module: _BatchNorm, n_tasks: int) -> None:
        super().__init__()
        self.inner = module  # holds the shared weight and bias (and the initial statistics)
        self.n_tasks = n_tasks
        if module.track_running_stats:
            assert module.running_mean is not None and module.running_var is not None
            self.register_buffer("running_mean", module.running_mean.detach().clone().repeat(n_tasks, 1))
            self.register_buffer("running_var", module.running_var.detach().clone().repeat(n_tasks, 1))
            self.register_buffer("num_batches_tracked", torch.zeros(n_tasks, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        bn, streams = self.inner, x.split(x.shape[0] // self.n_tasks)
        if not bn.track_running_stats:
            return torch.cat([bn(s) for s in streams])
        own = bn.running_mean, bn.running_var, bn.num_batches_tracked
        out = []
        try:  # the layer's own forward (any batch-norm subclass) on each stream's statistics (row views)
            for t, s in enumerate(streams):
                bn.running_mean, bn.running_var = self.running_mean[t], self.running_var[t]
                bn.num_batches_tracked = self.num_batches_tracked[t]
                out.append(bn(s))
        finally:
            bn.running_mean, bn.running_var, bn.num_batches_tracked = own
        return torch.cat(out)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def branchable_layers(trunk: nn.Module) -> set[str]:
    """Names of the trunk's layers that can be turned task-specific (leaf modules with parameters)."""
    return {
        name
        for name, m in trunk.named_modules()
        if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    }


def branchable_in(parts: list[tuple[str, nn.Module]]) -> set[str]:
    """:func:`branchable_layers` of each part, under the part's prefix."""
    return {f"{prefix}.{n}" if prefix else n for prefix, root in parts for n in branchable_layers(root)}


def check_branchable(parts: list[tuple[str, nn.Module]], branched: list[str]) -> None:
    """Every name in ``branched`` is a branchable layer of ``parts`` (:func:`branchable_in`)."""
    allowed = branchable_in(parts)
    for name in branched:
        if name not in allowed:
            raise ValueError(f"layer {name!r} cannot be branched (not a leaf module owning parameters of the shared parts)")


def stack_streams(x: Any, n_tasks: int) -> Any:
    """T copies of a batch stacked on the batch axis: one stream per task. A batch that is not a
    tensor (a batch of molecule graphs) stacks itself (``repeat_streams``)."""
    if not isinstance(x, Tensor):
        if not hasattr(x, "repeat_streams"):
            raise TypeError(f"a batch of {type(x).__name__} cannot be split into task streams (it has no repeat_streams method)")
        return x.repeat_streams(n_tasks)
    return x.repeat(n_tasks, *([1] * (x.ndim - 1)))


def _inside(name: str, branched: list[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in branched)


def branch(
    root: nn.Module, names: list[str], n_tasks: int, init: str, style: str,
    generator: torch.Generator | None, current: CurrentTask | None = None,
) -> None:  # fmt: skip
    """Replace each named layer of ``root`` by a :class:`TaskBranch`, its copies re-initialised
    one after another from ``generator`` (``init = "reinit"``, see :data:`INIT_RULES`)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    for name in names:
        layer = TaskBranch(root.get_submodule(name), n_tasks, current)
        if init == "reinit":
            for c in layer.copies:
                reinitialise(c, style, generator)
        _set_submodule(root, name, layer)


def per_stream_norms(root: nn.Module, branched: list[str], n_tasks: int, before_split: frozenset[str] = frozenset()) -> None:
    """Wrap ``root``'s batch norms in :class:`PerStream`, except those branched and those that
    run before the streams split (``before_split``: their names)."""
    for name, m in list(root.named_modules()):
        if isinstance(m, _BatchNorm) and not _inside(name, branched) and name not in before_split:
            _set_submodule(root, name, PerStream(m, n_tasks))


class StreamSplit:
    """The forward pre-hook at the split point: stacks T copies of the module's input."""

    def __init__(self, n_tasks: int, active: bool = True) -> None:
        self.n_tasks, self.active = n_tasks, active

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self.active:
            return None
        return (stack_streams(args[0], self.n_tasks), *args[1:])


def split_point(trunk: nn.Module, branched: list[str]) -> str | None:
    """Where the task streams start: the deepest ancestor of the first branched layer (in
    registration order) reached from the trunk through direct children and nn.Sequential
    elements only — a module whose input is the previous module's output alone, so everything
    before it can run once for all tasks. None when nothing is branched."""
    if not branched:
        return None
    order = {name: i for i, (name, _) in enumerate(trunk.named_modules())}
    parts = min(branched, key=order.__getitem__).split(".")
    point = parts[0]
    for i in range(1, len(parts)):
        if not isinstance(trunk.get_submodule(point), nn.Sequential):
            break
        point = f"{point}.{parts[i]}"
    return point


INIT_RULES = {
    "reinit": "each task copy re-initialised independently with the backbone's initialiser, as Recon's code "
    "(which builds the branched network afresh): Kaiming-normal convolutions (fan_out, ReLU) for ResNets, "
    "Xavier-normal convolutions and linears for SegNet; batch norms 1/0; other layers copied; a trunk that "
    "declares init_style = 'default' (the MPNN): every layer's own PyTorch initialisation (reset_parameters)",
    "copy": "every task copy starts from the shared layer's weights",
}


def reinitialise(module: nn.Module, style: str, generator: torch.Generator) -> None:
    """Re-draw a branched layer copy's weights (see :data:`INIT_RULES`); ``style`` ``kaiming``
    (timm and Recon ResNets) or ``xavier`` (SegNet, MTAN's initialisation)."""
    if style == "default":  # each layer's own initialiser, its draws from ``generator``
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and any(True for _ in m.parameters(recurse=False)):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                    reset()
        return
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d) and style == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and style == "xavier":
                nn.init.xavier_normal_(m.weight, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _BatchNorm) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class BranchedModel(MultiTaskModel):
    """A hard-sharing model whose ``branched`` trunk layers are task-specific (Recon's surgery).

    The trunk runs once on the batch up to :func:`split_point` (batch norms there stay plain
    shared layers: every task sees the same statistics, as its own single-task network would),
    and on the T stacked task streams from there on. The first forward pass checks, in eval mode
    and without side effects, that this equals running the whole trunk per stream; a trunk whose
    forward is not sequential at the split point (a skip connection crossing it) runs every
    stream from the input instead (``prefix_once`` False, in Recon's report)."""

    def __init__(
        self, base: HardSharingModel, branched: list[str], init: str = "copy", generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        tasks = list(base.heads)
        self.n_tasks = len(tasks)
        trunk = base.trunk
        check_branchable(base.surgery_parts(), branched)
        self.split_at = split_point(trunk, branched)
        order = [name for name, _ in trunk.named_modules()]
        # registration order = execution order before the split point (checked at the first forward)
        before_split = frozenset(order[: order.index(self.split_at)] if self.split_at is not None else order)
        branch(trunk, branched, self.n_tasks, init, init_style(trunk), generator)
        per_stream_norms(trunk, branched, self.n_tasks, before_split)
        self.trunk = trunk
        self.heads = base.heads
        self.branched = list(branched)
        self._splitter = StreamSplit(self.n_tasks, active=self.split_at is not None)
        self._checked = False
        if self.split_at is not None:
            trunk.get_submodule(self.split_at).register_forward_pre_hook(self._splitter)

    @property
    def prefix_once(self) -> bool:
        return self._splitter.active

    @prefix_once.setter
    def prefix_once(self, value: bool) -> None:
        self._splitter.active = value

    def _check_prefix(self, x: Tensor) -> None:
        """Once: the shared prefix computed once equals the trunk run per stream (eval mode, no
        gradient, no running-statistics update)."""
        self._checked = True
        if not isinstance(x, Tensor):  # a graph batch: every stream runs from the input
            self.prefix_once = False
        if not self.prefix_once:
            return
        modes = {m: m.training for m in self.trunk.modules()}
        try:
            self.trunk.eval()
            with torch.no_grad():
                sample = x[: min(len(x), 4)]
                try:
                    once: Tensor | None = self.trunk(sample)
                except RuntimeError:  # a tensor from before the split point is used after it
                    once = None
                self.prefix_once = False
                per_stream = self.trunk(stack_streams(sample, self.n_tasks))
            if once is not None and once.shape == per_stream.shape:
                scale = float(per_stream.abs().max()) + 1e-12
                self.prefix_once = float((once - per_stream).abs().max()) <= 1e-4 * scale
        finally:
            for m, mode in modes.items():
                m.training = mode

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b = len(x)
        if not self._checked:
            self._check_prefix(x)
        z = self.trunk(x if self.prefix_once else stack_streams(x, self.n_tasks))
        return {t: head(s) for (t, head), s in zip(self.heads.items(), z.split(b))}

    def shared_layers(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The trunk's layers minus the task copies, under their names before surgery."""
        return shared_after_surgery([("", self.trunk)])

    def reference_layers(self, n_tasks: int) -> list[tuple[str, list[list[nn.Parameter]]]]:
        """The unmodified trunk's layers in order; a branched layer as each task's own copy."""
        return reference_after_surgery([("", self.trunk)], n_tasks)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        i = list(self.heads).index(task)
        return task_copies(self.trunk, i) + [p for p in self.heads[task].parameters() if p.requires_grad]


def _label(prefix: str, name: str, wrapped: set[str]) -> str:
    """A layer's name before surgery (a PerStream norm's ``.inner`` dropped), under ``prefix``."""
    parent, _, leaf = name.rpartition(".")
    name = parent if leaf == "inner" and parent in wrapped else name
    return f"{prefix}.{name}" if prefix else name


def shared_after_surgery(parts: list[tuple[str, nn.Module]]) -> list[tuple[str, list[nn.Parameter]]]:
    """The shared layers of the (prefix, module) parts, task copies left out, under their names
    before surgery."""
    out = []
    for prefix, root in parts:
        task_owned = {id(p) for m in root.modules() if isinstance(m, TaskBranch) for p in m.parameters()}
        wrapped = {name for name, m in root.named_modules() if isinstance(m, PerStream)}
        out += [(_label(prefix, n, wrapped), ps) for n, ps in module_layers(root) if id(ps[0]) not in task_owned]
    return out


def reference_after_surgery(parts: list[tuple[str, nn.Module]], n_tasks: int) -> list[tuple[str, list[list[nn.Parameter]]]]:
    """The layers of the (prefix, module) parts as before surgery, in order, each with every
    task's parameters: a branched layer as each task's own copy."""
    out: list[tuple[str, list[list[nn.Parameter]]]] = []
    for prefix, root in parts:
        branches = {name: m for name, m in root.named_modules() if isinstance(m, TaskBranch)}
        wrapped = {name for name, m in root.named_modules() if isinstance(m, PerStream)}
        for name, params in module_layers(root):
            owner = next((b for b in branches if name.startswith(b + ".")), None)
            if owner is None:
                out.append((_label(prefix, name, wrapped), [params] * n_tasks))
            elif not out or out[-1][0] != _label(prefix, owner, wrapped):
                out.append((_label(prefix, owner, wrapped), [list(c.parameters()) for c in branches[owner].copies]))
        # (a branch's copies are consecutive layers of module_layers: one entry per branch)
    return out


def task_copies(root: nn.Module, i: int) -> list[nn.Parameter]:
    """Task i's copies of the branched layers under ``root``."""
    return [p for m in root.modules() if isinstance(m, TaskBranch) for p in m.copies[i].parameters()]
