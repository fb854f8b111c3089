"""The ResNet trunk that attention ResNets (SASA, Axial-ResNet) keep around their attention blocks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from vitlab.models.base import Backbone


class ConvStemResNet(Backbone):
    """A ResNet's conv stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool), four stages, pool, fc.

    Subclasses build the stages `layer1`..`layer4` (sequences of residual blocks, strides 4, 8, 16,
    32) between `__init__` and `_build_head`. Parameter names are torchvision's (`conv1`, `bn1`,
    `layer{i}`, `fc`), which the attention ResNets' releases keep.
    """

    feature_format = "NCHW"
    input_conv = "conv1.weight"

    def __init__(self, in_chans: int, stem_planes: int, num_classes: int, img_size: int | Sequence[int] | None):
        super().__init__(in_chans, num_classes, img_size)
        self.conv1 = nn.Conv2d(in_chans, stem_planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _build_head(self, stage_channels: Sequence[int]) -> None:
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i, module=f"layer{i + 1}") for i, c in enumerate(stage_channels)
        ]
        self.default_out_indices = (0, 1, 2, 3)
        self.num_features = stage_channels[-1]
        self.add_classifier("fc", self.num_features)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))  # global average pooling
        return x if pre_logits else self.fc(x)

    def stem(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def layers(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        x = self.stem(x)
        for layer in self.layers():
            x = self.run_blocks(layer, x)
            yield x

    def forward_features(self, x: Tensor) -> Tensor:
        for fmap in self.iter_features(x):
            x = fmap
        return x

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [block for layer in self.layers() for block in layer]
