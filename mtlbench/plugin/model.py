"""Multi-task models as the trainer sees them.

The trainer needs three things from a model: ``forward(x) -> {task: output}``, the shared
parameters grouped into layers (for per-task gradients and conflict statistics), and each
task's own parameters (which get only their task's gradient). :class:`MultiTaskModel` is the
interface; :class:`HardSharingModel` (one shared trunk, one head per task) implements it.
Architectures with task-specific parts inside the shared encoder (MTAN's attention modules,
Recon's branched layers) implement the same three methods.
"""

from __future__ import annotations

from typing import Mapping

from torch import Generator, Tensor, nn


class MultiTaskModel(nn.Module):
    """Interface: subclasses implement ``forward``, ``shared_layers`` and ``task_parameters``."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def shared_layers(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Shared parameters grouped by layer (Recon's definition), in a fixed order."""
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only ``task``'s loss reaches."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for _, ps in self.shared_layers() for p in ps]

    def reference_layers(self, n_tasks: int) -> list[tuple[str, list[list[nn.Parameter]]]]:
        """The shared layers of the *unmodified* model, each with every task's own parameters
        for it (one list per task): where a mitigation made a layer task-specific, task t's
        copy. Conflict statistics on this set compare across mitigations. Default: the shared
        layers, the same parameters for every task."""
        return [(name, [ps] * n_tasks) for name, ps in self.shared_layers()]

    def encode(self, x: Tensor) -> Tensor:
        """The shared representation (needed only by representation-gradient methods)."""
        raise NotImplementedError(
            f"{type(self).__name__} exposes no single shared representation (encode/decode); "
            "use a method that works on parameter gradients"
        )

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Task outputs from the shared representation: ``forward(x) == decode(encode(x))``."""
        raise NotImplementedError(f"{type(self).__name__} has no decode(); see encode()")

    def surgery_parts(self) -> list[tuple[str, nn.Module]]:
        """The shared sub-networks whose layers may be made task-specific (Recon's surgery), as
        (name prefix, module) in network order; ``[]``: the model offers no surgery."""
        return []

    def branch_layers(self, layers: list[str], init: str, generator: Generator | None = None) -> MultiTaskModel:
        """This model with the named shared ``layers`` (names under :meth:`surgery_parts`' prefixes)
        turned into one copy per task (:mod:`mtlbench.plugin.branching`); ``init`` ``"copy"`` or
        ``"reinit"`` (copies re-drawn from ``generator``)."""
        raise NotImplementedError(f"{type(self).__name__} offers no surgery (surgery_parts/branch_layers)")


class HardSharingModel(MultiTaskModel):
    """One shared trunk, one head per task."""

    def __init__(self, trunk: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

    def shared_layers(self) -> list[tuple[str, list[nn.Parameter]]]:
        return module_layers(self.trunk)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.heads[task].parameters() if p.requires_grad]

    def surgery_parts(self) -> list[tuple[str, nn.Module]]:
        return [("", self.trunk)]

    def branch_layers(self, layers: list[str], init: str, generator: Generator | None = None) -> MultiTaskModel:
        from mtlbench.plugin.branching import BranchedModel

        return BranchedModel(self, layers, init=init, generator=generator)


def module_layers(module: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """A module's layers in registration order, as Recon defines them: every sub-module that
    owns parameters directly (Conv, BatchNorm, Linear, LayerNorm, ...), weight and bias
    together. Parameters owned by a container itself (a ViT's cls_token/pos_embed) form a
    layer named after the container (``"<root>"`` for ``module`` itself)."""
    layers = []
    for name, sub in module.named_modules():
        params = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if params:
            layers.append((name or "<root>", params))
    return layers


def init_weights(module: nn.Module) -> None:
    """MTAN's initialisation (SegNet and the dense heads): Xavier-normal conv/linear weights, zero
    biases, BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
