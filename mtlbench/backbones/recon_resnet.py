"""ResNet18 as Recon's MultiFashion+MNIST code builds it (``MnistResNet_recon`` of
moukamisama/Recon, archs/resnet_recon_arch.py): the torchvision-layout ResNet18 with its 7x7
stride-2 stem and max-pool on 1-channel inputs, a *shared* fully connected layer 512 -> 100 and
a ReLU; each task's head is then Linear(100, 10). 41 layers with parameters (conv1, bn1, 8 blocks
x 4, 3 downsample convs and norms, fc): the layer set Recon's S-conflict ranking covers, under
the same names. Initialisation as Recon's: Kaiming-normal (fan_out, ReLU) convolutions, batch
norms 1/0, PyTorch's default Linear init — and no zero-initialised last batch norm per block
(timm's ResNet default, which Recon's code does not use)."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor

from mtlbench.plugin.backbone import NativeBackbone


class ReconResNet18(ResNet):
    """The trunk: ResNet18 with the shared fc (``features`` outputs) and a ReLU; layer names
    are timm's (= torchvision's = Recon's)."""

    def __init__(self, in_chans: int = 1, features: int = 100) -> None:
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes=features, in_chans=in_chans, zero_init_last=False)  # type: ignore[arg-type]
        self.out_channels = features

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x))


def feature_channels(features: int = 100) -> int:
    return features


class ReconResNet18Backbone(NativeBackbone):
    name = "resnet18_recon"
    description = (
        "ResNet18 as Recon's MultiFashion+MNIST code builds it: 7x7 stem, shared fc 512->100 + ReLU before "
        "the heads, no zero-init (41 layers); kwargs: features (default 100)"
    )
    citation = "Shi et al., Recon, ICLR 2023 (MnistResNet_recon in github.com/moukamisama/Recon)"
    representation = "pooled"
    network = ReconResNet18
    feature_channels = staticmethod(feature_channels)
