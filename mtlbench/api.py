"""The public plugin API: what a file in ``tasks/``, ``baselines/`` or ``mitigations/`` imports.

A *task* (``tasks/*.py``) is a :class:`Task` subclass whose metadata is data: name, version,
citation, sub-task names, metrics with their direction, and the default training protocol.
A *method* (``baselines/*.py``) is a subclass of :class:`LossWeighting` (or
:class:`MetaWeighting`), :class:`GradientAggregator` (or :class:`SharpnessAware`, a wrapper of
another method), :class:`SequentialGroups` or :class:`SingleTask`. A *mitigation* (``mitigations/*.py``) is a
:class:`Mitigation` subclass. The engine discovers every subclass that sets ``name`` in a plugin
file (mtlbench.core.registry); nothing else needs editing to add one.

Every plugin declares a ``version``: bump it with any change that can change a result, so old
results become stale (re-run by ``mtlbench run``, never aggregated with new ones).

Methods and tasks never import the trainer or the runner: they see tensors and a
:class:`StepInfo`, nothing more.
"""

from mtlbench.core.result import MitigationClaim
from mtlbench.core.spec import MetricSpec, Protocol
from mtlbench.datasets.splits import MappedColumn, MappedSplit, MultiInputSplit, Split, arrow_columns
from mtlbench.plugin.method import (
    GRADIENT_TARGETS,
    METHOD_KINDS,
    METHOD_PROPERTIES,
    METHOD_ROLES,
    GradientAggregator,
    GramWeighting,
    LastLayerBayes,
    LossWeighting,
    MetaWeighting,
    Method,
    MultiSampleAggregator,
    ReferenceMatch,
    SequentialGroups,
    SharpnessAware,
    SingleTask,
    StepInfo,
)
from mtlbench.plugin.mitigation import Mitigation, MitigationContext
from mtlbench.plugin.model import HardSharingModel, MultiTaskModel, module_layers
from mtlbench.plugin.task import Evaluator, Task

__all__ = [
    "MetricSpec",
    "Protocol",
    "Task",
    "Evaluator",
    "Split",
    "MultiInputSplit",
    "MappedSplit",
    "MappedColumn",
    "arrow_columns",
    "StepInfo",
    "Method",
    "LossWeighting",
    "GradientAggregator",
    "GramWeighting",
    "MultiSampleAggregator",
    "MetaWeighting",
    "SharpnessAware",
    "SequentialGroups",
    "LastLayerBayes",
    "ReferenceMatch",
    "METHOD_PROPERTIES",
    "SingleTask",
    "METHOD_KINDS",
    "METHOD_ROLES",
    "GRADIENT_TARGETS",
    "Mitigation",
    "MitigationContext",
    "MitigationClaim",
    "MultiTaskModel",
    "HardSharingModel",
    "module_layers",
]
