"""A small convolutional network, vitlab's own: a teacher for DeiT-style distillation on small data.

DeiT (Touvron et al. 2021, section 5.2) found a convnet teacher better than a transformer one,
"probably because of the inductive bias inherited by the transformer through distillation". This
is a plain VGG-like stack for small images: stages of two 3x3 conv-BN-ReLU layers, each stage
after the first halving the resolution with a stride-2 convolution, then global average pooling
and a linear classifier. No published weights: train it with `vitlab train --model convnet_small`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.registry import register_model


def conv_bn(in_chs: int, out_chs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)
    )


class ConvNet(nn.Module):
    """Stages of [conv-BN-ReLU (stride 2 except in the first stage), conv-BN-ReLU]; avg pool; linear head.

    Any input size works (the convolutions pad and the pooling is global). `img_size` is accepted
    for a uniform interface and ignored.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        img_size: int | None = None,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        del img_size, drop_path_rate  # no position tables, no residual paths to drop
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.grad_checkpointing = False
        stages, chs = [], in_chans
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(conv_bn(chs, width, 1 if i == 0 else 2), conv_bn(width, width)))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(chs, num_classes) if num_classes else nn.Identity()
        self.feature_info = [dict(num_chs=w, reduction=2**i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.default_out_indices = tuple(range(len(widths)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    classifier_keys = ("head",)

    def no_weight_decay(self) -> set[str]:
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def run_stage(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = self.run_stage(stage, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        maps = {}
        for i, stage in enumerate(self.stages[: max(indices) + 1]):
            x = self.run_stage(stage, x)
            maps[i] = x
        return [maps[i] for i in indices]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)


_REFERENCE = "vitlab (a small VGG-style teacher for distillation)"
for _name, _widths in (("convnet_tiny", (16, 32, 64)), ("convnet_small", (32, 64, 128))):
    register_model(_name, ConvNet, dict(widths=_widths), _REFERENCE, input_size=(3, 32, 32), crop_pct=1.0)
