"""SegNet and SegNet-MTAN: the dense-prediction networks of the NYUv2 / CityScapes literature.

- SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017) as MTAN's code builds it: a VGG16-style
  encoder of five stages (2, 2, 3, 3, 3 conv-BN-ReLU blocks, widths 64-128-256-512-512) with
  2x2 max-pooling, and a mirrored decoder that un-pools with the encoder's pooling indices. As a
  trunk it returns the last decoder feature map (N, widths[0], H, W), at the input resolution.
- SegNet-MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019):
  the shared SegNet plus, per task, soft-attention modules (1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid)
  that mask the shared features of every encoder and decoder stage, chained through shared 3x3
  conv blocks. Shared: the SegNet and the chaining conv blocks. Task-specific: each task's
  attention modules and its head.

Architecture and initialisation (Xavier-normal convolutions, zero biases, BatchNorm 1/0) follow
the reference implementation in MTAN's repository (lorenmt/mtan, ``model_segnet_mtan.py``) as
reused by CAGrad, Nash-MTL and FAMO. Where that code puts the attention modules among the shared
parameters (Nash-MTL's ``SegNetMtan.shared_parameters`` keeps everything except the heads), we
follow the MTAN paper: attention modules belong to their task, so gradient methods aggregate
only over what all tasks share.

Two operations are written out so that training stays deterministic: un-pooling is a scatter of
the pooled values to their indices (``nn.MaxUnpool2d`` has no deterministic implementation), and
MTAN's x2 bilinear up-sampling (``align_corners=True``) is two gathers and a lerp per axis
(``F.interpolate``'s CUDA backward is non-deterministic). Both compute the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlbench.plugin.backbone import NativeBackbone
from mtlbench.plugin.branching import (
    CurrentTask,
    branch,
    check_branchable,
    init_style,
    per_stream_norms,
    reference_after_surgery,
    shared_after_surgery,
    stack_streams,
    task_copies,
)
from mtlbench.plugin.model import MultiTaskModel, init_weights, module_layers

DEFAULT_WIDTHS = (64, 128, 256, 512, 512)
STAGES = 5
DIVISOR = 2**STAGES  # five 2x2 poolings


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU (MTAN's ``conv_layer``)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def attention_block(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """MTAN's attention module: 1x1 conv-BN-ReLU, 1x1 conv-BN-sigmoid."""
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, kernel_size=1),
        nn.BatchNorm2d(mid_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_ch, out_ch, kernel_size=1),
        nn.BatchNorm2d(out_ch),
        nn.Sigmoid(),
    )


def unpool(x: Tensor, indices: Tensor, size: torch.Size) -> Tensor:
    """Max-unpooling: place each value at its pooling index in a zero map of spatial ``size``."""
    n, c = x.shape[:2]
    out = x.new_zeros(n, c, size[0] * size[1])
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, size[0], size[1])


def upsample2x(x: Tensor) -> Tensor:
    """x2 bilinear up-sampling with ``align_corners=True`` (as MTAN's ``F.interpolate`` call)."""
    for dim in (2, 3):
        x = _lerp_axis(x, dim)
    return x


def _lerp_axis(x: Tensor, dim: int) -> Tensor:
    n_in = x.shape[dim]
    n_out = 2 * n_in
    if n_in == 1:
        return x.repeat_interleave(2, dim=dim)
    pos = torch.arange(n_out, device=x.device, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = pos.floor().long().clamp(max=n_in - 2)
    frac = (pos - lo).to(x.dtype)
    shape = [1] * x.ndim
    shape[dim] = n_out
    frac = frac.view(shape)
    return x.index_select(dim, lo) * (1 - frac) + x.index_select(dim, lo + 1) * frac


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(widths)
    if len(widths) != STAGES or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"widths must be {STAGES} positive integers (one per stage), got {list(widths)}")
    return widths


def feature_channels(widths: Sequence[int] = DEFAULT_WIDTHS) -> int:
    """Channels of the full-resolution features SegNet (and SegNet-MTAN) hand to the heads."""
    return check_widths(widths)[0]


class Stage(nn.Module):
    """One SegNet stage: a first conv block (its output feeds MTAN's attention) and the rest."""

    def __init__(self, in_ch: int, out_ch: int, n_rest: int) -> None:
        super().__init__()
        self.first = conv_block(in_ch, out_ch)
        self.rest = nn.Sequential(*[conv_block(out_ch, out_ch) for _ in range(n_rest)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = self.first(x)
        return first, self.rest(first)


@dataclass
class SegNetFeatures:
    """Intermediate maps MTAN's attention reads. Encoder lists are indexed by stage (0 = full
    resolution); decoder lists are in processing order (0 = the deepest stage)."""

    encoder_first: list[Tensor]
    encoder_out: list[Tensor]
    decoder_unpooled: list[Tensor]
    decoder_out: list[Tensor]


class SegNet(nn.Module):
    """SegNet encoder-decoder; ``forward`` returns the last decoder map (N, widths[0], H, W).

    H and W must be divisible by 32 (five 2x2 poolings).
    """

    init_style = "xavier"  # MTAN's initialisation, for re-drawn task copies (mtlbench.plugin.branching)

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w = self.widths = check_widths(widths)
        n_rest = (1, 1, 2, 2, 2)  # 2, 2, 3, 3, 3 conv blocks per stage: VGG16's 13
        self.encoder = nn.ModuleList(Stage(in_chans if k == 0 else w[k - 1], w[k], n_rest[k]) for k in range(STAGES))
        # decoder stage k mirrors encoder stage k: w[k] -> w[k-1] (stage 0: w[0] -> w[0])
        self.decoder = nn.ModuleList(Stage(w[k], w[max(k - 1, 0)], n_rest[k]) for k in range(STAGES))
        init_weights(self)

    @property
    def out_channels(self) -> int:
        return self.widths[0]

    def features(self, x: Tensor) -> SegNetFeatures:
        h, w = x.shape[-2:]
        if h % DIVISOR or w % DIVISOR:
            raise ValueError(f"SegNet needs an input height and width divisible by {DIVISOR} (five 2x2 poolings); got {h}x{w}")
        f = SegNetFeatures([], [], [], [])
        pooled, indices, sizes = x, [], []
        for stage in self.encoder:
            first, out = stage(pooled)
            f.encoder_first.append(first)
            f.encoder_out.append(out)
            sizes.append(out.shape[-2:])
            pooled, idx = F.max_pool2d(out, kernel_size=2, stride=2, return_indices=True)
            indices.append(idx)
        current = pooled
        for k in reversed(range(STAGES)):
            up = unpool(current, indices[k], sizes[k])
            _, current = self.decoder[k](up)
            f.decoder_unpooled.append(up)
            f.decoder_out.append(current)
        return f

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).decoder_out[-1]


class TaskAttention(nn.Module):
    """One task's MTAN attention modules, indexed by stage."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList(attention_block(w[0] if k == 0 else 2 * w[k], w[k], w[k]) for k in range(STAGES))
        self.decoder = nn.ModuleList(
            attention_block(2 * w[0] if k == 0 else w[k] + w[k - 1], w[max(k - 1, 0)], w[max(k - 1, 0)]) for k in range(STAGES)
        )


class SegNetMTAN(MultiTaskModel):
    """SegNet-MTAN with one attention branch and one head per task (see the module docstring).

    ``widths[3]`` must equal ``widths[4]`` (the deepest decoder attention concatenates the two).
    """

    SHARED_PARTS = ("segnet", "encoder_link", "decoder_link")  # the shared sub-networks, in order
    init_style = "xavier"  # MTAN's initialisation, for re-drawn task copies (mtlbench.plugin.branching)

    def __init__(self, heads: Mapping[str, nn.Module], in_chans: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        w = check_widths(widths)
        if w[3] != w[4]:
            raise ValueError(
                f"SegNet-MTAN needs widths[3] == widths[4] (MTAN concatenates the two deepest stages); got {list(w)}"
            )
        self.segnet = SegNet(in_chans, w)
        # shared conv blocks that carry each task's attended features from stage to stage
        self.encoder_link = nn.ModuleList(conv_block(w[k], w[min(k + 1, STAGES - 1)]) for k in range(STAGES))
        self.decoder_link = nn.ModuleList(conv_block(w[k], w[k] if k in (0, STAGES - 1) else w[k - 1]) for k in range(STAGES))
        self.attention = nn.ModuleDict({t: TaskAttention(w) for t in heads})
        for part in (self.encoder_link, self.decoder_link, self.attention):
            init_weights(part)
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.segnet.features(x)
        return {t: head(self.attend(self.attention[t], f)) for t, head in self.heads.items()}  # type: ignore[arg-type]

    def attend(self, attention: TaskAttention, f: SegNetFeatures) -> Tensor:
        """One task's attended decoder output (N, widths[0], H, W)."""
        a: Tensor | None = None
        for k in range(STAGES):
            gate_in = f.encoder_first[k] if a is None else torch.cat((f.encoder_first[k], a), dim=1)
            masked = attention.encoder[k](gate_in) * f.encoder_out[k]
            a = F.max_pool2d(self.encoder_link[k](masked), kernel_size=2, stride=2)
        assert a is not None  # STAGES >= 1
        for i, k in enumerate(reversed(range(STAGES))):
            a = self.decoder_link[k](upsample2x(a))
            a = attention.decoder[k](torch.cat((f.decoder_unpooled[i], a), dim=1)) * f.decoder_out[i]
        return a  # type: ignore[return-value]

    def shared_layers(self) -> list[tuple[str, list[nn.Parameter]]]:
        layers = []
        for prefix in self.SHARED_PARTS:
            layers += [(f"{prefix}.{name}", ps) for name, ps in module_layers(getattr(self, prefix))]
        return layers

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        params = list(self.attention[task].parameters()) + list(self.heads[task].parameters())
        return [p for p in params if p.requires_grad]

    def surgery_parts(self) -> list[tuple[str, nn.Module]]:
        """The shared SegNet and link blocks (Recon's candidates in its MTAN code)."""
        return [(p, getattr(self, p)) for p in self.SHARED_PARTS]

    def branch_layers(self, layers: list[str], init: str, generator: torch.Generator | None = None) -> MultiTaskModel:
        return BranchedMTAN(self, layers, init=init, generator=generator)


class BranchedMTAN(MultiTaskModel):
    """Recon's surgery on SegNet-MTAN: the candidates are the shared layers (the SegNet and the
    shared conv blocks between attention stages, as in Recon's MTAN code); each task's
    attention modules and head stay its own. A branched SegNet layer makes the SegNet compute
    T streams (from the input: its un-pooling indices cross stages, so no prefix runs once;
    unbranched SegNet batch norms keep per-stream statistics); each task's attention path reads
    its own stream. A branched link block (applied per task in the attention path, as in MTAN)
    applies task t's copy to task t's features; unbranched link norms keep MTAN's behaviour."""

    def __init__(
        self, base: SegNetMTAN, branched: list[str], init: str = "copy", generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        tasks = list(base.heads)
        self.n_tasks = len(tasks)
        self.current = CurrentTask()
        check_branchable(base.surgery_parts(), branched)
        branch(base, branched, self.n_tasks, init, init_style(base), generator, self.current)
        in_segnet = [b[len("segnet.") :] for b in branched if b.startswith("segnet.")]
        self.streams = bool(in_segnet)
        if self.streams:
            per_stream_norms(base.segnet, in_segnet, self.n_tasks)
        self.base = base
        self.heads = base.heads
        self.branched = list(branched)
        self.split_at: str | None = "input" if self.streams else None
        self.prefix_once = False

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b, base = x.shape[0], self.base
        f = base.segnet.features(stack_streams(x, self.n_tasks) if self.streams else x)
        out = {}
        try:
            for i, (t, head) in enumerate(self.heads.items()):
                own = type(f)(*[[m[i * b : (i + 1) * b] if self.streams else m for m in maps] for maps in vars(f).values()])
                self.current.task = i
                out[t] = head(base.attend(base.attention[t], own))  # type: ignore[arg-type]
        finally:
            self.current.task = None
        return out

    def shared_layers(self) -> list[tuple[str, list[nn.Parameter]]]:
        return shared_after_surgery(self.base.surgery_parts())

    def reference_layers(self, n_tasks: int) -> list[tuple[str, list[list[nn.Parameter]]]]:
        return reference_after_surgery(self.base.surgery_parts(), n_tasks)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        i = list(self.heads).index(task)
        own = task_copies(self.base, i) + list(self.base.attention[task].parameters()) + list(self.heads[task].parameters())
        return [p for p in own if p.requires_grad]


class SegNetBackbone(NativeBackbone):
    name = "segnet"
    description = (
        "SegNet encoder-decoder (VGG16 layout, pooling-index un-pooling), as in MTAN's code; "
        "kwargs: widths (5 stage widths, default 64-128-256-512-512)"
    )
    citation = "Badrinarayanan, Kendall & Cipolla, SegNet, TPAMI 2017; MTAN's code (Liu et al., CVPR 2019)"
    network = SegNet
    feature_channels = staticmethod(feature_channels)


class SegNetMTANBackbone(NativeBackbone):
    name = "segnet_mtan"
    description = "SegNet-MTAN: shared SegNet with per-task attention modules (Liu et al., CVPR 2019); kwargs: widths"
    citation = "Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019"
    network = SegNetMTAN
    builds_model = True
    feature_channels = staticmethod(feature_channels)
