"""The task extension point: a multi-task dataset with its heads, losses, metrics and protocol
(one file per dataset in ``tasks/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence
from typing import Protocol as TypingProtocol

import torch
from torch import Tensor, nn

from mtlbench.core.registry import Plugin
from mtlbench.core.spec import MetricSpec, Protocol
from mtlbench.datasets.splits import MultiInputSplit, Split


class Evaluator(TypingProtocol):
    """Accumulates predictions over a whole split, then computes metric values by key."""

    def update(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task(Plugin):
    """A multi-task dataset with its heads, losses, metrics and protocol.

    Subclasses set the class attributes below and implement :meth:`load`, :meth:`build_head`,
    :meth:`loss` and :meth:`evaluator`. Options are the keyword arguments of ``__init__``
    (with defaults); a suite sets them in ``benchmark.toml``. ``__init__`` must be cheap (read
    no data) and raise ``ValueError`` for a bad option value: the config check calls it. A fix that changes results ships
    as a new ``version``: results record it, and results of different versions never mix.
    """

    tasks: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    main_metrics: ClassVar[Mapping[str, str]] = {}  # sub-task -> metric key used for selection
    multi_input: ClassVar[bool] = False  # each sub-task has its own inputs: load() returns MultiInputSplit splits
    delta_m_convention: ClassVar[str] = "flat"  # the Δm the leaderboard ranks by: "flat" or "task"
    # sub-task -> the likelihood its loss is the negative log of, in the head's outputs (what a
    # Bayesian last-layer method needs): "categorical" (cross-entropy of logits); unlisted: unknown
    likelihoods: ClassVar[Mapping[str, str]] = {}
    protocol: ClassVar[Protocol] = Protocol()
    input_shape: tuple[int, int, int] = (1, 32, 32)
    # What the heads read: "pooled" (the trunk's feature vector, (N, D); ``build_head`` gets D),
    # "dense" (a feature map at the input resolution, (N, C, H, W); ``build_head`` gets C) or
    # "graph" (a feature vector per molecular graph from a graph network; ``input_shape[0]`` is
    # the number of atom features).
    representation: ClassVar[str] = "pooled"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    # -- data
    def load(self, data_dir: Path) -> Mapping[str, Split | MultiInputSplit]:
        """Return ``{"train": ..., "val": ..., "test": ...}``, building the store if needed
        (a :class:`MultiInputSplit` each when the task is ``multi_input``)."""
        raise NotImplementedError

    def attach(self, splits: Mapping[str, Any]) -> None:
        """Called with the splits this task instance trains and evaluates on, also when they
        come from a cache that another instance loaded (default: nothing). A task whose heads,
        losses or metrics depend on the data (QM9's target scales) takes what it needs here."""

    def prepare(self, source: Path, data_dir: Path) -> Path:
        """Convert a dataset in its standard on-disk format into the suite's store."""
        raise NotImplementedError(f"task {self.name!r} has no `prepare` step")

    def prepare_installed(self, data_dir: Path) -> Path:
        """``mtlbench prepare TASK`` without ``--source``: build the store from data the task finds
        itself (e.g. in an installed package). By default there is none: ``--source`` is required."""
        from mtlbench.core.errors import ConfigError

        raise ConfigError(f"prepare {self.name}: --source is required (the folder of the dataset in its standard format)")

    def prepare_command(self, source: str = "PATH") -> str:
        """The ``mtlbench prepare`` command that builds this task's store with its current options."""
        defaults = self.option_defaults()
        extra = "".join(f" --option {k}={v}" for k, v in self.options.items() if v != defaults.get(k))
        return f"mtlbench prepare {self.name} --source {source}{extra}"

    def augment(self, x: Tensor, targets: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Training-time augmentation of one batch (default: none)."""
        return x, targets

    # -- model parts
    def build_head(self, task: str, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def evaluator(self, tasks: Sequence[str]) -> Evaluator:
        raise NotImplementedError

    # -- selection
    def selection_score(self, metrics: Mapping[str, float], tasks: Sequence[str]) -> float:
        """Validation score to maximise (default: mean of the sub-tasks' main metrics, signed)."""
        direction = {m.key: m.higher_is_better for m in self.metrics}
        values = []
        for t in tasks:
            key = self.main_metrics[t]
            values.append(metrics[key] if direction[key] else -metrics[key])
        return float(sum(values) / len(values))

    @classmethod
    def plugin_errors(cls) -> list[str]:
        out = [f"must declare {a}" for a in ("tasks", "metrics") if not getattr(cls, a, None)]
        if cls.delta_m_convention not in ("flat", "task"):
            out.append(f"delta_m_convention {cls.delta_m_convention!r}; valid: 'flat', 'task'")
        return out
