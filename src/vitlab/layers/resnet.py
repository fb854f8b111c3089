"""The ResNet trunk that attention ResNets (SASA, Axial-ResNet) keep around their attention blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ConvStemResNet(nn.Module):
    """A ResNet's conv stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool), four stages, pool, fc.

    Subclasses build the stages `layer1`..`layer4` (sequences of residual blocks, strides 4, 8, 16,
    32) between `__init__` and `_build_head`. Parameter names are torchvision's (`conv1`, `bn1`,
    `layer{i}`, `fc`), which the attention ResNets' releases keep. Provides the vitlab model
    contract: forward / forward_features / forward_head, feature maps, classifier reset, activation
    checkpointing.
    """

    classifier_keys = ("fc",)
    default_out_indices = (0, 1, 2, 3)

    def __init__(self, in_chans: int, stem_planes: int, num_classes: int):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, stem_planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _build_head(self, stage_channels: Sequence[int]) -> None:
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i, module=f"layer{i + 1}") for i, c in enumerate(stage_channels)
        ]
        self.num_features = stage_channels[-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, self.num_classes) if self.num_classes else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def stem(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def run_stage(self, index: int, x: Tensor) -> Tensor:
        use_checkpoint = self.grad_checkpointing and torch.is_grad_enabled()
        for block in getattr(self, f"layer{index + 1}"):
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(4):
            x = self.run_stage(i, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """The outputs of the stages in `indices` (strides 4, 8, 16, 32), NCHW."""
        x = self.stem(x)
        maps = {}
        for i in range(max(indices) + 1):
            x = self.run_stage(i, x)
            maps[i] = x
        return [maps[i] for i in indices]
