"""Stand-Alone Self-Attention in vision models (Ramachandran et al. 2019, "SASA").

Every spatial 3x3 convolution of a ResNet becomes *local* self-attention: each pixel attends to the
k x k neighbourhood around it (section 3.1, eq. 2; k = 7, 8 heads), with relative position
embeddings on the keys (eq. 3):

    y_ij = sum_{a,b in N_k(i,j)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab

where r_{a-i,b-j} concatenates a row-offset embedding and a column-offset embedding. A stride-2
layer is followed by 2x2 average pooling (section 4.1). The models are the paper's ResNet-26/38/50
with a convolutional stem and attention everywhere else ("conv-stem + attention", Table 1).

No official code was released, so the names are ours (torchvision's for the ResNet trunk). Choices
the paper leaves open, made here: neighbours outside the image are left out of the softmax (not
attended as zeros), so a border pixel attends over fewer positions; the row/column embeddings are
split per head, so that every head sees both offsets (see `LocalSelfAttention`); odd sides pool to
ceil(side / 2) like the strided 1x1 shortcut, the last row/column pooled on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend
from vitlab.layers.flex import neighbourhood_attention, use_flex
from vitlab.layers.grouping import batch_mask
from vitlab.layers.grouping.neighbourhoods import Neighbourhoods
from vitlab.layers.position import row_column_embeddings
from vitlab.models.resnet import ConvStemResNet
from vitlab.registry import register_model


class LocalSelfAttention(AttentionLayer):
    """Multi-head self-attention over the k x k neighbourhood of each pixel (SASA eq. 2-3).

    `query`, `key`, `value` are 1x1 projections (the paper's W_Q, W_K, W_V). `emb_row` and
    `emb_col` hold the row- and column-offset embeddings, k offsets each, d_out/2 channels each.
    The paper writes eq. 3 for one head; with N heads, head n uses its own slice of both tables
    (d_out/2N channels of each) concatenated, i.e. its d_out/N-channel share of r_{a-i,b-j} with the
    channels grouped by head. Logits are not scaled by 1/sqrt(d), as in eq. 3; instead the query
    projection starts small enough for unit-variance logits.

    Since q.k + q.r = q.(k + r), the neighbourhoods (`layers.grouping.neighbourhoods`) are attended
    with keys k + r in one `attend()` call per layer, with the plan's mask leaving out the
    neighbours that fall outside the map; r is assembled by `layers.position.row_column_embeddings`.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 7, num_heads: int = 8, stride: int = 1):
        super().__init__()
        if out_planes % (2 * num_heads):
            raise ValueError(
                f"out_planes {out_planes} must split into {num_heads} heads with an even number of channels each"
            )
        self.grouping = Neighbourhoods(kernel_size)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.kernel_size = kernel_size
        self.num_heads = num_heads
        self.head_dim = out_planes // num_heads
        self.query = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.key = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.value = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.emb_row = nn.Parameter(torch.empty(kernel_size, out_planes // 2))
        self.emb_col = nn.Parameter(torch.empty(kernel_size, out_planes // 2))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        in_planes = self.query.in_channels
        nn.init.normal_(self.query.weight, 0.0, (in_planes * self.head_dim) ** -0.5)
        for proj in (self.key, self.value):
            nn.init.normal_(proj.weight, 0.0, in_planes**-0.5)
        for table in (self.emb_row, self.emb_col):
            nn.init.normal_(table, 0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        heads, d, window = self.num_heads, self.head_dim, self.kernel_size**2
        if use_flex(x, heads, d, self.attention_store is not None, self.query.weight):
            out = self._flex_forward(x)
            return self.pool(out) if self.pool is not None else out
        plan = self.grouping.plan((H, W), x.device)

        # Explicit sizes rather than -1 in the views: with symbolic sizes, torch.export simplified the inferred
        # size (a quotient of products of nested floor divisions) for minutes per layer (docs/export.md).
        def gather(t: Tensor) -> Tensor:  # (B, C, H, W) -> (B * H * W, heads, k * k, d)
            return self.grouping.group(t, plan).view(B * H * W, window, heads, d).transpose(1, 2)

        q = self.query(x).permute(0, 2, 3, 1).contiguous().view(B * H * W, heads, 1, d)  # one query per pixel
        k = gather(self.key(x)) + row_column_embeddings(self.emb_row, self.emb_col, heads)
        v = gather(self.value(x))
        out = attend(q, k, v, bias=batch_mask(plan.mask, B), scale=1.0, store=self.attention_store)
        out = out.reshape(B, H, W, heads * d).permute(0, 3, 1, 2)  # the grouping's ungroup, sizes explicit
        return self.pool(out) if self.pool is not None else out

    def _flex_forward(self, x: Tensor) -> Tensor:
        """The same attention by FlexAttention over the whole map (`layers.flex`), without gathered windows."""
        B, C, H, W = x.shape

        def split(t: Tensor) -> Tensor:  # (B, heads * d, H, W) -> (B, heads, H * W, d)
            return t.reshape(B, self.num_heads, self.head_dim, H * W).transpose(-1, -2)

        relative = row_column_embeddings(self.emb_row, self.emb_col, self.num_heads)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = neighbourhood_attention(q, k, v, relative, (H, W), self.kernel_size, scale=1.0)
        return out.transpose(-1, -2).reshape(B, -1, H, W)


class AttentionBottleneck(nn.Module):
    """ResNet bottleneck whose 3x3 convolution is local self-attention (stride: 2x2 average pool after)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        kernel_size: int = 7,
        num_heads: int = 8,
        downsample: bool = False,
    ):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.attn = LocalSelfAttention(planes, planes, kernel_size, num_heads, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)) if downsample else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.attn(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SASAResNet(ConvStemResNet):
    """A ResNet with local self-attention in place of every spatial convolution but the stem's.

    `width` is the stem's and the first stage's number of channels (64 in the paper), doubling per
    stage. No parameter depends on the input size (`img_size` is accepted like every model's).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        kernel_size: int = 7,
        num_heads: int = 8,
        in_chans: int = 3,
        num_classes: int = 1000,
        zero_init_residual: bool = True,
        width: int = 64,
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__(in_chans, width, num_classes, img_size)
        if len(layers) != 4:
            raise ValueError(f"a SASA ResNet has 4 stages, got layers={tuple(layers)}")
        inplanes = width
        for i, depth in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            out = planes * AttentionBottleneck.expansion
            blocks = [AttentionBottleneck(inplanes, planes, stride, kernel_size, num_heads, downsample=True)]
            blocks += [AttentionBottleneck(out, planes, 1, kernel_size, num_heads) for _ in range(1, depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self._build_head([width * 2**i * AttentionBottleneck.expansion for i in range(4)])
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and ".attn." not in name:  # attention keeps its own initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero: the block starts as identity
            for m in self.modules():
                if isinstance(m, AttentionBottleneck):
                    nn.init.zeros_(m.bn3.weight)


_REF = "SASA: Ramachandran et al. 2019"
for _depth, _layers, _top1 in [(26, (1, 2, 4, 1), 75.8), (38, (2, 3, 5, 2), 77.1), (50, (3, 4, 6, 3), 77.4)]:
    register_model(
        f"sasa_resnet{_depth}",
        SASAResNet,
        dict(layers=_layers),
        _REF,
        tiny=dict(layers=(1, 1, 1, 1), width=8, num_heads=2),
        paper=dict(top1=_top1),
    )
