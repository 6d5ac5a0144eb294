"""Backbones: shared trunks, adapted to the task's input and to the representation it needs.

A backbone is declared in ``benchmark.toml`` as ``[backbones.<id>]`` with ``model``, ``kwargs``,
``stem`` and ``pretrained`` (default false: nothing is downloaded). ``model`` names a native
network of mtlbench (:func:`native_models`, looked up first) or any timm model.

Tasks declare the representation their heads read (``Task.representation``):
- ``"pooled"``: a feature vector per image, (N, D); timm models with ``num_classes=0``;
- ``"dense"``: a feature map at the input resolution, (N, C, H, W); the native SegNet trunk.
SegNet-MTAN is not a trunk: its attention modules sit inside the shared network, so it builds
the whole multi-task model (:class:`mtlbench.backbones.segnet.SegNetMTAN`) around the task's heads.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtlbench.core.errors import ConfigError
from mtlbench.core.registry import Registry, discover
from mtlbench.core.spec import BackboneSpec
from mtlbench.plugin.backbone import REPRESENTATIONS, NativeBackbone
from mtlbench.plugin.model import HardSharingModel, MultiTaskModel


def native_models() -> Registry[NativeBackbone]:
    """The native backbones (mtlbench/backbones/), found by the plugin registry once per process."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = discover("backbone", NativeBackbone, packages=["mtlbench.backbones"])
    return _NATIVE


_NATIVE: Registry[NativeBackbone] | None = None


STEMS = {
    "default": "the model's own stem",
    "3x3": "ResNet stem replaced by a 3x3 stride-1 conv, no max-pool (CIFAR-style, for small images)",
    "3x3-s2": "ResNet stem replaced by a 3x3 stride-2 conv, no max-pool (small images, 4x cheaper than 3x3)",
}


def known_model(name: str) -> bool:
    import timm

    return name in native_models() or timm.is_model(name)


def suggest_models(name: str, n: int = 5) -> list[str]:
    """Close matches among native and timm model names (native ones first)."""
    import timm

    native = difflib.get_close_matches(name, list(native_models()), n=n, cutoff=0.5)
    return native + difflib.get_close_matches(name, timm.list_models(), n=n - len(native), cutoff=0.5)


def representation_of(spec: BackboneSpec) -> str:
    """The representation a backbone's trunk gives: a native model's, else ``"pooled"`` (timm)."""
    native = native_models().get(spec.model)
    return native.representation if native is not None else "pooled"


def check_backbone(spec: BackboneSpec, representation: str) -> None:
    """Raise a ConfigError unless ``spec`` can serve a task that needs ``representation``."""
    given = representation_of(spec)
    if given != representation:
        fitting = [n for n, m in native_models().items() if m.representation == representation]
        if representation == "pooled":
            hint = "use a timm model (its pooled features feed the heads)" + (f" or {', '.join(fitting)}" if fitting else "")
        else:
            hint = f"use a native {representation} model: {', '.join(fitting)}"
        raise ConfigError(
            f"backbone {spec.id!r} ({spec.model}) gives {REPRESENTATIONS[given]}, but the task needs "
            f"{REPRESENTATIONS[representation]}; {hint}"
        )
    native = native_models().get(spec.model)
    if native is None:
        return
    if spec.stem != "default" or spec.pretrained:
        raise ConfigError(
            f"backbone {spec.id!r}: native model {spec.model!r} takes neither `stem` nor `pretrained` "
            "(it trains from scratch, as in the papers); remove them"
        )
    unknown = sorted(set(spec.kwargs) - set(native.kwargs()))
    if unknown:
        raise ConfigError(f"backbone {spec.id!r}: {spec.model!r} has no kwargs {unknown}; valid: {', '.join(native.kwargs())}")


def build_multitask_model(
    spec: BackboneSpec,
    input_shape: tuple[int, int, int],
    representation: str,
    tasks: Sequence[str],
    make_head: Callable[[str, int], nn.Module],
) -> MultiTaskModel:
    """The multi-task model for ``tasks``: a trunk plus ``make_head(task, feature_size)`` per
    task (hard sharing), or a native architecture built around those heads."""
    check_backbone(spec, representation)
    native = native_models().get(spec.model)
    if native is not None and native.builds_model:
        width = _native(spec, native, native.feature_channels)
        heads = {t: make_head(t, width) for t in tasks}
        return _native(spec, native, lambda **kw: native.network(heads, in_chans=input_shape[0], **kw))
    trunk, dim = build_trunk(spec, input_shape)
    return HardSharingModel(trunk, {t: make_head(t, dim) for t in tasks})


def _native(spec: BackboneSpec, native: type[NativeBackbone], build: Callable[..., Any]) -> Any:
    try:
        return build(**spec.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"backbone {spec.id!r} ({native.name}): {e}") from None


def build_trunk(spec: BackboneSpec, input_shape: tuple[int, int, int]) -> tuple[nn.Module, int]:
    """Build the shared trunk for inputs of shape (C, H, W); return it and its feature size
    (channels for a dense trunk)."""
    import timm

    in_chans = input_shape[0]
    native = native_models().get(spec.model)
    if native is not None:
        if native.builds_model:
            raise ConfigError(f"backbone {spec.id!r}: {spec.model!r} builds a whole multi-task model, not a trunk")
        trunk = _native(spec, native, lambda **kw: native.network(in_chans=in_chans, **kw))
        return trunk, trunk.out_channels
    if not timm.is_model(spec.model):
        hint = suggest_models(spec.model)
        raise ConfigError(
            f"backbone {spec.id!r}: unknown timm model {spec.model!r}"
            + (f"; close matches: {', '.join(hint)}" if hint else "; see `timm.list_models()`")
        )
    overlay = cached_weights(spec) if spec.pretrained else None
    extra: dict[str, Any] = dict(spec.kwargs)
    if overlay is not None:
        extra["pretrained_cfg_overlay"] = {"file": str(overlay)}
    try:
        trunk = timm.create_model(spec.model, pretrained=spec.pretrained, num_classes=0, in_chans=in_chans, **extra)
    except TypeError as e:
        raise ConfigError(f"backbone {spec.id!r}: timm rejected kwargs {spec.kwargs}: {e}") from None
    except (OSError, RuntimeError) as e:
        if not spec.pretrained:
            raise
        raise ConfigError(
            f"backbone {spec.id!r}: the pretrained weights of {spec.model!r} are not in the local HuggingFace cache "
            f"and could not be fetched ({type(e).__name__}). Fetch them once where there is network "
            f"(python -c \"import timm; timm.create_model('{spec.model}', pretrained=True)\") and copy the cache "
            "(HF_HOME, default ~/.cache/huggingface) here"
        ) from None
    if spec.stem != "default":
        _replace_resnet_stem(trunk, spec, in_chans)
    try:
        was_training = trunk.training
        trunk.eval()
        with torch.no_grad():
            out = trunk(torch.zeros(2, *input_shape))
        trunk.train(was_training)
    except Exception as e:  # the model does not accept this input size
        raise ConfigError(
            f"backbone {spec.id!r} ({spec.model}) fails on inputs of shape {tuple(input_shape)}: {e}. "
            "For a ViT set kwargs.img_size to the input size and a patch_size that divides it."
        ) from None
    if out.ndim != 2:
        raise ConfigError(f"backbone {spec.id!r} returns features of shape {tuple(out.shape)}; expected (batch, dim)")
    return trunk, int(out.shape[1])


def cached_weights(spec: BackboneSpec) -> Path | None:
    """The file of ``spec.model``'s pretrained weights in the local HuggingFace cache, or None.
    Found there, timm loads it without touching the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(spec.model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _replace_resnet_stem(trunk: nn.Module, spec: BackboneSpec, in_chans: int) -> None:
    conv = getattr(trunk, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(trunk, "maxpool"):
        raise ConfigError(
            f"backbone {spec.id!r}: stem={spec.stem!r} applies to timm ResNets with a plain conv1 stem; "
            f'{spec.model!r} has none. Use stem = "default".'
        )
    stride = 1 if spec.stem == "3x3" else 2
    trunk.conv1 = nn.Conv2d(in_chans, conv.out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
    trunk.maxpool = nn.Identity()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
