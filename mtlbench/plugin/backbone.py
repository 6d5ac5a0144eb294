"""The native-backbone extension point: a network mtlbench builds itself instead of taking it
from timm (built-ins in ``mtlbench/backbones/``, found by the plugin registry)."""

from __future__ import annotations

import inspect
from typing import Callable, ClassVar

from torch import nn

from mtlbench.core.registry import Plugin

REPRESENTATIONS = {
    "pooled": "a feature vector per image (N, D)",
    "dense": "a feature map at the input resolution (N, C, H, W)",
    "graph": "a feature vector per molecular graph (N, D), from a graph network",
}


class NativeBackbone(Plugin):
    """``network(in_chans=..., **kwargs)`` is a shared trunk, or, when ``builds_model``,
    ``network(heads, in_chans=..., **kwargs)`` is a whole multi-task model around the given
    heads (architectures with task-specific parts inside). ``feature_channels(**kwargs)`` is
    the channel count the heads receive; ``representation`` what the trunk gives (see
    :data:`REPRESENTATIONS`). The kwargs of ``network`` are the backbone's ``kwargs`` in
    benchmark.toml."""

    representation: ClassVar[str] = "dense"
    builds_model: ClassVar[bool] = False
    network: ClassVar[type[nn.Module]]

    feature_channels: ClassVar[Callable[..., int]]

    @classmethod
    def kwargs(cls) -> list[str]:
        skip = {"self", "heads", "in_chans"}
        return [p for p in inspect.signature(cls.network.__init__).parameters if p not in skip]

    @classmethod
    def plugin_errors(cls) -> list[str]:
        out = [] if isinstance(getattr(cls, "network", None), type) else ["must set `network` to an nn.Module class"]
        if cls.representation not in REPRESENTATIONS:
            out.append(f"representation {cls.representation!r}; valid: {', '.join(REPRESENTATIONS)}")
        return out
