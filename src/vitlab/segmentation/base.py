"""The contract every segmentation model keeps: an encoder from `vitlab.models`, a decoder, logits per pixel.

A segmentation model holds its encoder as `backbone` (any registered backbone that offers
multi-scale features, built without a classifier), its decoder as `decode_head` and, where the
design trains auxiliary decoders (SETR), those as `auxiliary_head`. `forward_logits` returns the
decoder's logits at its own output stride (and, in training mode, the auxiliary logits);
`forward` returns logits at the input's size, which is what users and evaluation want. Losses
are computed on logits resized to the labels' size, as mmsegmentation does, with `align_corners`
of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.grouping import in_graph
from vitlab.models.base import SavesPretrained

IGNORE_INDEX = 255  # label of pixels that no loss or metric counts (void, borders, ADE20K's "other")


@dataclass
class SegmentationOutput:
    """Logits of the decoder at its output stride, (batch, classes, h, w), and of the auxiliary
    decoders (training mode only), each with its loss weight in `aux_weights`."""

    logits: Tensor
    aux: list[Tensor] = field(default_factory=list)
    aux_weights: list[float] = field(default_factory=list)


def resize_logits(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (batch, classes, h, w) logits to `size` (a no-op when already that size; an
    exported or compiled graph always resizes, the identity at the same size, so that no size is baked in
    and torch.compile adds no guard on whether the sizes match)."""
    if not in_graph() and tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class SegmentationModel(SavesPretrained, nn.Module):
    """Base of every segmentation model (see the module docstring)."""

    task: ClassVar[str] = "semantic-segmentation"
    align_corners: bool = False
    backbone: nn.Module
    decode_head: nn.Module

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a segmentation model needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_chans = in_chans

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}")
        check = getattr(self.backbone, "check_input", None)
        if check is not None:
            check(x)

    def forward_logits(self, x: Tensor) -> SegmentationOutput:
        """Decoder logits at the decoder's stride; auxiliary logits too when `self.training`."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits at the input's height and width, (batch, num_classes, H, W)."""
        return resize_logits(self.forward_logits(x).logits, tuple(x.shape[-2:]), self.align_corners)

    def head_parameter_names(self) -> list[str]:
        """Parameters outside the encoder (decoders), which recipes train with a larger learning rate."""
        return [name for name, _ in self.named_parameters() if not name.startswith("backbone.")]

    def unused_parameter_names(self) -> list[str]:
        """Parameters the forward pass never uses, kept so that the released checkpoints load strictly
        (a classifier the encoder was pre-trained with, a head layer the release carries unused)."""
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        setter = getattr(self.backbone, "set_grad_checkpointing", None)
        if setter is not None:
            setter(enable)

    @property
    def pretrained_cfg(self) -> dict[str, Any] | None:
        entry = getattr(self, "entry", None)
        if entry is None:
            return None
        pre = entry.preprocess
        return dict(architecture=entry.name, task=entry.task, input_size=pre.input_size, mean=pre.mean,
                    std=pre.std, num_classes=entry.num_classes, url=entry.url)  # fmt: skip


def build_backbone(backbone: str | nn.Module, **overrides: Any) -> nn.Module:
    """An encoder for a decoder: a registered backbone name (built without a classifier, with
    `overrides`) or a model instance. It must offer `feature_info` and `forward_intermediates`."""
    if isinstance(backbone, str):
        from vitlab.registry import create_model, get_entry

        if get_entry(backbone).task != "image-classification":
            raise ValueError(f"backbone {backbone!r} is not an image backbone")
        backbone = create_model(backbone, num_classes=0, **overrides)
    if not hasattr(backbone, "forward_intermediates") or not hasattr(backbone, "feature_info"):
        raise TypeError(f"{type(backbone).__name__} does not provide multi-scale features (features_only)")
    return backbone
