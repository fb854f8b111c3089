"""A small convolutional network, vitlab's own: a teacher for DeiT-style distillation on small data.

DeiT (Touvron et al. 2021, section 5.2) found a convnet teacher better than a transformer one,
"probably because of the inductive bias inherited by the transformer through distillation". This
is a plain VGG-like stack for small images: stages of two 3x3 conv-BN-ReLU layers, each stage
after the first halving the resolution with a stride-2 convolution, then global average pooling
and a linear classifier. No published weights: train it with `vitlab train --model convnet_small`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from vitlab.models.base import Backbone
from vitlab.registry import Preprocess, register_model


def conv_bn(in_chs: int, out_chs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)
    )


class ConvNet(Backbone):
    """Stages of [conv-BN-ReLU (stride 2 except in the first stage), conv-BN-ReLU]; avg pool; linear head.

    Any input size works (the convolutions pad and the pooling is global); no parameter depends on
    it (`img_size` is accepted like every model's). Each stage is one block for layer-wise decay.
    """

    feature_format = "NCHW"
    input_conv = "stages.0.0.0.weight"

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__(in_chans, num_classes, img_size)
        self.num_features = widths[-1]
        stages, chs = [], in_chans
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(conv_bn(chs, width, 1 if i == 0 else 2), conv_bn(width, width)))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.add_classifier("head", chs)
        self.feature_info = [dict(num_chs=w, reduction=2**i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.default_out_indices = tuple(range(len(widths)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.run_blocks(self.stages, x)

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        self.check_input(x)
        for stage in self.stages:
            x = self.run_blocks([stage], x)
            yield x

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return list(self.stages)


_REFERENCE = "vitlab (a small VGG-style teacher for distillation)"
for _name, _widths in (("convnet_tiny", (16, 32, 64)), ("convnet_small", (32, 64, 128))):
    register_model(
        _name,
        ConvNet,
        dict(widths=_widths),
        _REFERENCE,
        tiny=dict(widths=(8, 16)),
        preprocess=Preprocess((3, 32, 32), crop_pct=1.0),
    )
# The CNN of the data-efficiency study (benchmarks/data_efficiency.py): 0.45M parameters with one input
# channel and 10 classes, the size of the `*_mini_28` transformers; also the DeiT student's teacher there.
register_model(
    "convnet_mini_28",
    ConvNet,
    dict(widths=(40, 80, 160), in_chans=1, num_classes=10),
    _REFERENCE,
    tiny=dict(widths=(8, 16)),
    preprocess=Preprocess((1, 28, 28), (0.5,), (0.5,), crop_pct=1.0),
)
