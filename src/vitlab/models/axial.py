"""Axial-DeepLab's Axial-ResNets (Wang et al. 2020, "Axial-DeepLab: Stand-Alone Axial-Attention").

A 2-D self-attention is factorised into two 1-D ones: every column attends along the height, then
every row along the width (section 3.2, Fig. 2), so each block has a global receptive field at
O(hw(h + w)) cost. The attention is *position-sensitive* (section 3.1, eq. 4): learned relative
embeddings r^q, r^k, r^v add query-, key- and value-dependent position terms. An Axial-ResNet is a
ResNet-50 (or -26) whose bottleneck 3x3 convolutions are replaced by this pair of axial layers.

The layout and the parameter names are those of the authors' PyTorch release
(csrhddlam/axial-deeplab, lib/models/axialnet.py, ImageNet conv-stem models), so its checkpoints
load with strict=True. Like that release, the three logits q.k, q.r^q and k.r^k are batch-normalised
separately and summed (no 1/sqrt(d)), and the output is BN([sv, s r^v]) summed over its two halves.

Input sizes: the relative table of a layer covers offsets up to its *span* - 1, the feature size
of the `img_size` the model was built for (56 in stage 1 for 224, as in the release). Shorter
axes use the middle of the table (the offsets they need); longer axes get the table linearly
interpolated to the offsets they need, on the fly; `adapt_state_dict` does the same once for a
checkpoint made for another `img_size`. In a graph (ONNX, torch.export, torch.compile) the choice is not made
in Python: `centred_relative_embeddings` serves every length. Odd sizes are fine: the stride-2 average pooling rounds
up (`ceil_mode`), as the strided 1x1 shortcut does, and pools the last row/column on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, record_attention
from vitlab.layers.grouping import in_graph, size_max
from vitlab.layers.grouping.axes import Axes
from vitlab.layers.position import relative_index_1d, resize_relative_table_1d
from vitlab.models.resnet import ConvStemResNet
from vitlab.registry import register_model


class AxialAttention(AttentionLayer):
    """Position-sensitive self-attention along one axis (Axial-DeepLab eq. 4), multi-head.

    y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})

    q and k get half of a head's `group_planes` channels each, v all of them. The relative
    table `relative` holds [r^q; r^k; r^v] for the offsets -(span-1)..span-1, shared by the heads.

    The three logit terms go through their own batch-norm channels before being summed, and the
    value term is also normalised separately from sv; both need the explicit logits and
    probabilities, so the fused `attend()` kernel cannot be used here: the softmax is computed
    directly and the probabilities are handed to `capture_attention` through `record_attention`.

    `axis` "columns" attends along every column (the paper's height axis), "rows" along every row
    (its width axis).
    """

    def __init__(
        self, in_planes: int, out_planes: int, groups: int = 8, span: int = 56, stride: int = 1, axis: str = "columns"
    ):
        super().__init__()
        if in_planes % groups or out_planes % groups or (out_planes // groups) % 2:
            raise ValueError(
                f"axial attention needs in_planes {in_planes} and out_planes {out_planes} divisible by groups "
                f"{groups}, with an even number of channels per group"
            )
        self.out_planes = out_planes
        self.groups = groups
        self.group_planes = out_planes // groups
        self.span = span
        self.grouping = Axes(axis)
        self.qkv_transform = nn.Conv1d(in_planes, out_planes * 2, kernel_size=1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(out_planes * 2)
        self.bn_similarity = nn.BatchNorm2d(groups * 3)
        self.bn_output = nn.BatchNorm1d(out_planes * 2)
        self.relative = nn.Parameter(torch.empty(self.group_planes * 2, span * 2 - 1))
        self.register_buffer("flatten_index", relative_index_1d(span).flatten())
        self.pooling = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else None
        nn.init.normal_(self.qkv_transform.weight, 0.0, math.sqrt(1.0 / in_planes))
        nn.init.normal_(self.relative, 0.0, math.sqrt(1.0 / self.group_planes))

    def relative_embeddings(self, length: int) -> Tensor:
        """(2 group_planes, length, length): entry [:, i, j] embeds the offset i - j.

        Eager runs crop the table (an axis no longer than the span) or resample it (a longer one). While a
        graph is traced (`in_graph`) that choice on the length is made by `centred_relative_embeddings`
        with operations that hold for every length, so one graph serves axes on both sides of the span.
        """
        if in_graph():
            return centred_relative_embeddings(self.relative, self.span, length)
        if length <= self.span:
            index = self.flatten_index.view(self.span, self.span)[:length, :length]
            return self.relative[:, index]
        table = resize_relative_table_1d(self.relative, 2 * length - 1)
        return table[:, relative_index_1d(length, table.device)]

    def project_qkv(self, x: Tensor) -> Tensor:
        """The 1x1 convolution `qkv_transform` of the (B * other axis, C, L) sequences.

        In a graph it is the same product written as a matmul: choosing a convolution's CPU kernel compares
        its batch, here B times the other axis, with 16 (torch's backend choice), so under torch.compile
        the convolution would guard on every stage's map size and recompile where a size crosses it.
        """
        if in_graph():
            return torch.matmul(self.qkv_transform.weight[:, :, 0], x)
        return self.qkv_transform(x)

    def forward(self, x: Tensor) -> Tensor:
        plan = self.grouping.plan(x.shape[-2:], x.device)
        x = self.grouping.group(x, plan)  # (B * other axis, C, L)
        n, _, length = x.shape
        gp = self.group_planes
        qkv = self.bn_qkv(self.project_qkv(x)).view(n, self.groups, gp * 2, length)
        q, k, v = torch.split(qkv, [gp // 2, gp // 2, gp], dim=2)
        r_q, r_k, r_v = torch.split(self.relative_embeddings(length), [gp // 2, gp // 2, gp], dim=0)

        qk = torch.einsum("ngci,ngcj->ngij", q, k)
        qr = torch.einsum("ngci,cij->ngij", q, r_q)
        kr = torch.einsum("ngcj,cji->ngij", k, r_k)  # the key's offset seen from the query: r^k_{j-i}
        logits = self.bn_similarity(torch.cat([qk, qr, kr], dim=1)).view(n, 3, self.groups, length, length).sum(1)
        probs = logits.softmax(dim=-1)
        record_attention(self.attention_store, probs)

        sv = torch.einsum("ngij,ngcj->ngci", probs, v)
        sve = torch.einsum("ngij,cij->ngci", probs, r_v)
        # The release's channel order: for each output channel, its sv then its sve.
        out = torch.stack([sv, sve], dim=-2).reshape(n, self.out_planes * 2, length)
        out = self.bn_output(out).view(n, self.out_planes, 2, length).sum(dim=2)
        out = self.grouping.ungroup(out, plan)
        return self.pooling(out) if self.pooling is not None else out


def centred_relative_embeddings(relative: Tensor, span: int, length: int | Tensor) -> Tensor:
    """What `AxialAttention.relative_embeddings` gives eagerly, for a traced or symbolic `length`.

    The (C, 2 span - 1) table of offsets -(span - 1)..span - 1 is always resampled (linear, end points
    aligned) to M = max(2 length - 1, 2 span - 1) offsets; entry [:, i, j] is then row i - j + (M - 1) / 2,
    the offset i - j. For an axis no longer than the span, M is the table's own size, where this
    interpolation is exactly the identity (source position i, weights 1 and 0), and the rows taken are
    eager's crop of the middle; for a longer one it is eager's resampling to 2 length - 1 offsets. The
    resampling runs in float32 as eager's does (`resize_relative_table_1d`), in float64 for a float64 table.
    """
    offsets = size_max(2 * length - 1, 2 * span - 1)
    dtype = torch.float64 if relative.dtype == torch.float64 else torch.float32
    table = F.interpolate(relative[None].to(dtype), size=offsets, mode="linear", align_corners=True)[0]
    positions = torch.arange(length, device=relative.device)
    return table.to(relative.dtype)[:, positions[:, None] - positions[None, :] + (offsets - 1) // 2]


class AxialBlock(nn.Module):
    """Bottleneck with the 3x3 convolution replaced by height- then width-axis attention (Fig. 2)."""

    expansion = 2

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, groups: int = 8, span: int = 56, downsample: bool = False
    ):
        super().__init__()
        width = planes
        out = planes * self.expansion
        self.conv_down = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.hight_block = AxialAttention(width, width, groups, span, axis="columns")  # sic: the release's name
        self.width_block = AxialAttention(width, width, groups, span, stride=stride, axis="rows")
        self.conv_up = nn.Conv2d(width, out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)) if downsample else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv_down(x)))
        out = self.relu(self.width_block(self.hight_block(out)))
        out = self.bn2(self.conv_up(out))
        return self.relu(out + identity)


def _stem_size(size: int) -> int:
    """Side after the stride-2 7x7 convolution and the stride-2 max pool: both round up, so ceil(size / 4)."""
    return (size + 3) // 4


class AxialResNet(ConvStemResNet):
    """Axial-ResNet: the conv-stem ResNet of section 4.1 with axial-attention bottlenecks.

    `s` scales the widths (S 0.5, M 0.75, L 1.0). `img_size` sets the span of every layer's
    relative table to the feature size that input gives (the release's spans for 224).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        s: float = 0.5,
        groups: int = 8,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        zero_init_residual: bool = True,
    ):
        super().__init__(in_chans, int(64 * s), num_classes, img_size)
        if len(layers) != 4:
            raise ValueError(f"an Axial-ResNet has 4 stages, got layers={tuple(layers)}")
        self.inplanes = int(64 * s)
        size = max(_stem_size(side) for side in self.img_size)
        for i, depth in enumerate(layers):
            stage, size = self._make_layer(int(128 * 2**i * s), depth, 1 if i == 0 else 2, groups, size)
            self.add_module(f"layer{i + 1}", stage)
        self._build_head([int(128 * 2**i * s) * AxialBlock.expansion for i in range(4)])
        self._init_weights(zero_init_residual)

    def _make_layer(self, planes: int, depth: int, stride: int, groups: int, size: int) -> tuple[nn.Sequential, int]:
        # The first block attends at the stage's input size and pools; the others at the pooled size.
        downsample = stride != 1 or self.inplanes != planes * AxialBlock.expansion
        blocks = [AxialBlock(self.inplanes, planes, stride, groups, size, downsample)]
        self.inplanes = planes * AxialBlock.expansion
        size = -(-size // stride)
        blocks += [AxialBlock(self.inplanes, planes, 1, groups, size) for _ in range(1, depth)]
        return nn.Sequential(*blocks), size

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero: the block starts as identity
            for m in self.modules():
                if isinstance(m, AxialBlock):
                    nn.init.zeros_(m.bn2.weight)

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit the relative tables of a checkpoint made for another `img_size` to this model's spans.

        Tables are cropped to their middle or linearly interpolated (`resize_relative_table_1d`), so
        the model computes what the checkpoint's model computes on inputs of this size.
        """
        own = self.state_dict()
        out = dict(state_dict)
        for key, value in state_dict.items():
            target = own.get(key)
            if target is None or value.shape == target.shape:
                continue
            if key.endswith(".relative") and value.ndim == 2 and value.shape[0] == target.shape[0]:
                out[key] = resize_relative_table_1d(value, target.shape[1])
            elif key.endswith(".flatten_index"):
                out[key] = target.clone()
        return out


_REF = "Axial-DeepLab: Wang et al. 2020 (csrhddlam/axial-deeplab)"
for _name, _layers, _s in [
    ("axial26s", (1, 2, 4, 1), 0.5),
    ("axial50s", (3, 4, 6, 3), 0.5),
    ("axial50m", (3, 4, 6, 3), 0.75),
    ("axial50l", (3, 4, 6, 3), 1.0),
]:
    # The release publishes one ImageNet checkpoint, axial26s.pth (README: 75.8 top-1): load it with pretrained=PATH.
    _published = _name == "axial26s"
    register_model(
        _name,
        AxialResNet,
        dict(layers=_layers, s=_s),
        _REF,
        tiny=dict(layers=(1, 1, 1, 1), s=0.0625, groups=2),
        paper=dict(top1=75.8) if _published else {},
    )
