"""A small but honest segmentation model for the tests of data, training, evaluation and prediction:
a two-layer convolutional encoder to stride 2, a 1x1 convolution as the decoder, and optionally an
auxiliary 1x1 decoder on the first layer's features (loss weight 0.4, as SETR's); BatchNorm after the
first convolution unless `norm=False`.

It is registered from the tests only (`registered()` as a context manager or pytest fixture helper,
`register()` in a subprocess); library code never registers it.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.registry import _REGISTRY, Preprocess, register_model
from vitlab.segmentation import SegmentationModel, SegmentationOutput

NAME = "toy_seg"


class ToySegmenter(SegmentationModel):
    def __init__(
        self, num_classes: int = 5, width: int = 16, aux: bool = False, norm: bool = True, img_size: int = 32,
        in_chans: int = 3,
    ):  # fmt: skip
        super().__init__(num_classes, in_chans)
        self.img_size = (img_size, img_size)
        self.backbone = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.decode_head = nn.Conv2d(width, num_classes, 1)
        self.auxiliary_head = nn.Conv2d(width, num_classes, 1) if aux else None

    def forward_logits(self, x: Tensor) -> SegmentationOutput:
        self.check_input(x)
        first = self.backbone[:3](x)
        features = self.backbone[3:](first)
        out = SegmentationOutput(self.decode_head(features))
        if self.training and self.auxiliary_head is not None:
            out.aux.append(self.auxiliary_head(F.avg_pool2d(first, 2, ceil_mode=True)))
            out.aux_weights.append(0.4)
        return out


def register() -> None:
    if NAME not in _REGISTRY:
        register_model(
            NAME, ToySegmenter, dict(num_classes=5), "tests/segmentation/toy.py", tiny={},
            task="semantic-segmentation", num_classes=5, preprocess=Preprocess((3, 32, 32), (0.5,) * 3, (0.25,) * 3),
        )  # fmt: skip


def unregister() -> None:
    _REGISTRY.pop(NAME, None)


@contextlib.contextmanager
def registered():
    register()
    try:
        yield NAME
    finally:
        unregister()
