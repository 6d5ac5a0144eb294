"""The mitigation extension point: a grid axis of conflict mitigations that compose with every
method (built-ins in ``mtlbench/mitigations/``, a project's own in ``mitigations/`` next to
benchmark.toml; see docs/add-a-mitigation.md).

A mitigation sees the freshly initialised model before training (``prepare``, which may return
a modified model and may run work before training through the context, such as Recon's search
phase), may mask the task gradients and the update of every step, and reports what it did into
the result file (``report``). Options are the keyword arguments of ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence
from typing import Protocol as TypingProtocol

import torch
from torch import Tensor

from mtlbench.core.registry import Plugin
from mtlbench.core.result import Conflict, MitigationClaim
from mtlbench.plugin.model import MultiTaskModel


class SearchPhase(TypingProtocol):
    """Training before training, offered to a mitigation by the cell's trainer: train a fresh
    copy of the cell's unmodified model (same task, backbone, protocol and data) with the
    method named ``method`` for ``steps`` steps, sampling per-layer conflict statistics every
    ``every`` steps (with S-conflict counts for each threshold in ``s_values``), from ``seed``;
    return the conflict statistics (None when nothing was sampled)."""

    def __call__(self, method: str, steps: int, every: int, s_values: list[float], seed: int) -> Conflict | None: ...


@dataclass
class MitigationContext:
    """What a mitigation may use while preparing a cell's model (its work before training).

    ``search`` is a :class:`SearchPhase` (Recon's search). ``search_identity`` is everything
    about the cell that determines such a search except the mitigation's own options (a cache
    key). ``cache_dir`` (may be None) holds results of work shared between cells."""

    tasks: Sequence[str]
    total_steps: int
    seed: int
    search: SearchPhase
    search_identity: dict[str, Any]
    cache_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


class Mitigation(Plugin):
    ROLES: ClassVar[dict[str, str]] = {"unmitigated": "plain training: the row a mitigation's effect is measured against"}
    # True when mask_task_gradients changes the gradients: the trainer then records conflict
    # statistics on the unmasked reference set too (a subclass that overrides it must say so)
    masks_gradients: ClassVar[bool] = False
    # what its paper claims (the claims page judges each on the grid's paired runs)
    claims: ClassVar[tuple[MitigationClaim, ...]] = ()
    # the run page's caption for each list of records in report() (others show as key-value pairs)
    report_tables: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "mask_task_gradients" in vars(cls) and not cls.masks_gradients:
            raise TypeError(
                f"{cls.__module__}.{cls.__name__} overrides mask_task_gradients but does not declare "
                "masks_gradients = True (the trainer reads the declaration to record the unmasked reference set)"
            )

    def prepare(self, model: MultiTaskModel, ctx: MitigationContext) -> MultiTaskModel:
        return model

    def mask_task_gradients(self, grads: Tensor) -> Tensor:
        """(T, P) task gradients of the shared parameters -> the part that is trained."""
        return grads

    def before_step(self) -> None:
        """Called after the trainer set every ``.grad``, before the method's gradient clipping
        and ``optimizer.step()``."""

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called right after ``optimizer.step()``."""

    def report(self) -> dict[str, Any] | None:
        return None

    def method_errors(self, method: type) -> str | None:
        """Why this mitigation cannot run with ``method`` (a method class), or None; checked for
        every method of a suite when benchmark.toml is read."""
        return None

    def option_errors(self, methods: Mapping[str, Any]) -> dict[str, str]:
        """Problems with options that name other plugins (``methods``: name -> method class),
        as {option: message}; checked when benchmark.toml is read."""
        return {}
