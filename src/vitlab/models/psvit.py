"""PS-ViT: Vision Transformer with Progressive Sampling (Yue et al., ICCV 2021).

Instead of cutting the image into a fixed grid of patches, PS-ViT samples its tokens from a
convolutional feature map at points that move (the paper's progressive sampling module). A
ResNet-like stem makes a stride-4 map F; n_h x n_w points p_0 start on a regular grid (the centres of
equal cells of F); then, for iterations t = 1..N, with o_0 = 0 and T_0 = 0:

    p_t  = p_{t-1} + o_{t-1}                                   (the offset detached)
    T'_t = sample(F, p_{t-1} + gamma o_{t-1}) + W (p_t / size) + T_{t-1}
    T_t  = Transformer_t(T'_t),   o_t = M_t T_t                (offsets predicted from the tokens)

`sample` is bilinear interpolation at pixel-index coordinates with zeros outside the map. The
official code computes it with a CUDA kernel; here it is `F.grid_sample(align_corners=False,
padding_mode="zeros")` on pixel centres, which gives the same forward values (references file,
section 11). Only the sampler sees the offset scaled by `offset_gamma` (1 in every released variant);
the points carried on and encoded add it unscaled, as the official code does. The position encoding
W is one linear layer shared by every iteration; M_t exists for t < N. After the N iterations a
class token is prepended and ordinary transformer layers follow.

The state dict is the official release's (yuexy/PS-ViT): `point_coord` (the initial grid, (y, x),
x-major), the shared `pos_layer` listed again under every `ps_layers.i.position_layer`, `stem.*`,
`ps_layers.i.{transformer_layer, offset_layer}`, `trans_layers.*`, `norm`, `head`, `cls_token`.

Our choices: the official model only takes `img_size` inputs. Here the points keep the spacing they
have at `img_size` (a stride of img_size / num_points pixels), so another input size gets
proportionally more or fewer points on its own map, like a ViT's patches; the grid and the position
scale use the map's own height and width. At `img_size` (a multiple of 4) this is the official
computation; the grids are computed in float32 as the official buffer is, and cached per size. In
a graph (ONNX, torch.export, torch.compile) the count of points and the grid are computed from the
traced sizes with tensor operations instead (`rounded_points`, `grid_points`: the same values).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.layers import Mlp, MultiHeadAttention, drop_path_rates
from vitlab.layers.attention import PositionSampler, attend, record_positions
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.grouping import in_graph, size_max, size_min, size_tensor
from vitlab.models.base import Backbone
from vitlab.registry import Preprocess, register_model

STEM_STRIDE = 4  # conv 7x7 stride 2, then max-pool stride 2


class BottleneckLayer(nn.Module):
    """The stem's residual bottleneck (1x1, 3x3, 1x1 convolutions with BatchNorm), stride 1;
    a 1x1 projection on the shortcut when the width changes (official `BottleneckLayer`)."""

    def __init__(self, in_channels: int, inter_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inter_channels)
        self.conv2 = nn.Conv2d(inter_channels, inter_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_channels)
        self.conv3 = nn.Conv2d(inter_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def psvit_stem(in_chans: int, width: int, channels: int, embed_dim: int) -> nn.Sequential:
    """conv 7x7/2 (no bias), BN, ReLU, max-pool 3x3/2, Bottleneck(width -> channels), Bottleneck(channels -> D)."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        BottleneckLayer(width, width, channels),
        BottleneckLayer(channels, width, embed_dim),
    )


@lru_cache(maxsize=64)
def initial_points(
    num_h: int,
    num_w: int,
    height: int,
    width: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The regular grid p_1: centres of num_h x num_w equal cells of a height x width map, (1, N, 2).

    Points are (y, x) in the map's pixel-index coordinates, enumerated x-major (y varies fastest),
    computed in float32 as the official `point_coord` buffer is (so a checkpoint's buffer equals it),
    then moved to `device` and `dtype`. Cached per size, device and dtype; never modify the result.
    """
    cell_h, cell_w = height / num_h, width / num_w
    ys = torch.tensor([i * cell_h for i in range(num_h)], dtype=torch.float32, device="cpu") + cell_h / 2
    xs = torch.tensor([i * cell_w for i in range(num_w)], dtype=torch.float32, device="cpu") + cell_w / 2
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([grid_y, grid_x], dim=-1).reshape(1, -1, 2).to(device=device, dtype=dtype)


def rounded_points(num: int, side: int | Tensor, own: int) -> int | Tensor:
    """`max(1, round(num * side / own))` (Python's round, half to even) in integer arithmetic, so that it also
    holds for a traced (ONNX) or symbolic (torch.compile, torch.export) `side` without a guard on it."""
    twice = 2 * num * side + own  # floor(num side / own + 1/2) = twice // (2 own), the round half up
    rounded = twice // (2 * own)
    tie = 1 - size_min(twice % (2 * own), 1)  # 1 where num side / own is k + 1/2: the even one of k, k + 1
    return size_max(rounded - tie * (rounded % 2), 1)


def grid_points(
    num_h: int | Tensor, num_w: int | Tensor, height: int | Tensor, width: int | Tensor, device: torch.device,
    dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    """`initial_points` for traced or symbolic sizes, from tensor operations: the same values (cell sizes and
    i * cell in float64, rounded to float32, then the half cell added in float32, as the cached grid is made)."""

    def centres(num: int | Tensor, side: int | Tensor) -> Tensor:
        cell = size_tensor(side).to(torch.float64) / size_tensor(num).to(torch.float64)
        index = torch.arange(num, device=device).to(torch.float64)
        return (index * cell.to(device)).float() + (cell / 2).float().to(device)

    grid_x, grid_y = torch.meshgrid(centres(num_w, width), centres(num_h, height), indexing="ij")
    return torch.stack([grid_y, grid_x], dim=-1).reshape(1, -1, 2).to(dtype)


def bilinear_sample(fmap: Tensor, points: Tensor) -> Tensor:
    """Bilinear interpolation of `fmap` (B, C, H, W) at (y, x) pixel-index `points` (B, N, 2) -> (B, N, C).

    Neighbours outside the map count as zeros, so a point at or beyond one pixel outside gives 0.
    With align_corners=False, grid_sample's pixel i sits at (2i + 1) / size - 1.
    """
    height, width = fmap.shape[-2:]
    y, x = points.unbind(-1)
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    out = F.grid_sample(fmap, grid.unsqueeze(1), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(2).transpose(1, 2)


class ProgressiveSampler(PositionSampler):
    """Samples tokens at p + gamma * o. Under `capture_attention(model, positions=True)` it records the
    points as (B, N, 2) (x, y) pixel indices of the stem's map (stride 4: image pixel (p + 0.5) * 4 - 0.5)."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = gamma

    def forward(self, fmap: Tensor, point: Tensor, offset: Tensor) -> Tensor:
        points = point + offset * self.gamma
        record_positions(self.position_store, points.flip(-1))
        return bilinear_sample(fmap, points)


class ScaledAttention(MultiHeadAttention):
    """Multi-head self-attention with the official `qk_scale` (default head_dim^-1/2)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_scale: float | None, attn_drop: float, drop: float):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, drop)
        self.scale = qk_scale

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout_p = self.attn_drop if self.training else 0.0
        x = attend(q, k, v, scale=self.scale, dropout_p=dropout_p, store=self.attention_store)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


def transformer_layer(dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                      drop: float, attn_drop: float, drop_path: float, eps: float) -> PreNormBlock:  # fmt: skip
    attn = ScaledAttention(dim, heads, qkv_bias, qk_scale, attn_drop, drop)
    mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
    return PreNormBlock(dim, attn, mlp, drop_path, norm_layer=partial(nn.LayerNorm, eps=eps))


class ProgressiveSamplingLayer(nn.Module):
    """One sampling iteration: tokens from the map at the points, the transformer, the next offsets."""

    def __init__(
        self, dim: int, block: PreNormBlock, position_layer: nn.Linear, gamma: float, offset: bool, bias: bool
    ):
        super().__init__()
        self.transformer_layer = block
        self.sampler = ProgressiveSampler(gamma)
        self.position_layer = position_layer  # shared by every iteration (and listed under each)
        self.offset_layer = nn.Linear(dim, 2, bias=bias) if offset else None

    def tokens(
        self, fmap: Tensor, point: Tensor, offset: Tensor, scale: Tensor, previous: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """T'_t = sample(F, p + gamma o) + W (p + o) / size (+ T_{t-1}); returns (T'_t, p + o)."""
        tokens = self.sampler(fmap, point, offset)
        point = point + offset.detach()
        tokens = tokens + self.position_layer(point / scale)
        return (tokens if previous is None else tokens + previous), point


class PSViT(Backbone):
    """PS-ViT: the stem, `num_iters` progressive-sampling iterations, `depth - num_iters` transformer layers.

    `num_point_h` x `num_point_w` points at `img_size`; `with_cls_token` classifies a class token
    (every released variant), else the mean token. `stem_width` (64) and `stem_channels` (the first
    bottleneck's output) size the stem. `qk_scale` defaults to head_dim^-1/2; the official builders
    set embed_dim^-1/2 only on their `pretrained=True` path. The defaults are PS-ViT-B/14's (the
    official class's own defaults differ and no released variant uses them). The feature stride is
    img_size / num_point_h pixels (the rows'; a non-square point grid has another along the columns).
    """

    feature_format = "NLC"

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        num_point_w: int = 14,
        num_point_h: int = 14,
        in_chans: int = 3,
        num_classes: int = 1000,
        num_iters: int = 4,
        depth: int = 14,
        embed_dim: int = 384,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        stem_width: int = 64,
        stem_channels: int = 256,
        offset_gamma: float = 1.0,
        offset_bias: bool = True,
        with_cls_token: bool = True,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if not 1 <= num_iters <= depth:
            raise ValueError(f"num_iters must be between 1 and depth ({depth}), got {num_iters}")
        self.embed_dim = self.num_features = embed_dim
        self.num_points = (num_point_h, num_point_w)
        self.global_pool = "token" if with_cls_token else "avg"
        self.num_prefix_tokens = int(with_cls_token)
        self.input_conv = "stem.0.weight"

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if with_cls_token else None
        map_h, map_w = (-(-s // STEM_STRIDE) for s in self.img_size)
        self.register_buffer("point_coord", initial_points(num_point_h, num_point_w, map_h, map_w).clone())
        self.pos_layer = nn.Linear(2, embed_dim)
        self.stem = psvit_stem(in_chans, stem_width, stem_channels, embed_dim)
        rates = drop_path_rates(drop_path_rate, depth)
        args = (embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate)
        self.ps_layers = nn.ModuleList()
        for i in range(num_iters):
            block = transformer_layer(*args, rates[i], norm_eps)
            predicts_offsets = i < num_iters - 1  # the last iteration's offsets would never be used
            self.ps_layers.append(
                ProgressiveSamplingLayer(embed_dim, block, self.pos_layer, offset_gamma, predicts_offsets, offset_bias)
            )
        self.trans_layers = nn.ModuleList(transformer_layer(*args, rates[i], norm_eps) for i in range(num_iters, depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Identity()
        self.add_classifier("head", embed_dim)

        stride = self.img_size[0] / num_point_h  # pixels between points, at every input size
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=n) for n in self._block_names()]
        self.default_out_indices = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))
        self._init_weights()

    def _block_names(self) -> list[str]:
        names = [f"ps_layers.{i}.transformer_layer" for i in range(len(self.ps_layers))]
        return names + [f"trans_layers.{i}" for i in range(len(self.trans_layers))]

    @torch.no_grad()
    def _init_weights(self) -> None:
        self._init_linear_layers()
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for layer in self.ps_layers:
            if layer.offset_layer is not None:  # zero offsets at the start: p_t stays on the grid
                nn.init.zeros_(layer.offset_layer.weight)
                if layer.offset_layer.bias is not None:
                    nn.init.zeros_(layer.offset_layer.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def points_for(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Points per side for an input of `image_size`: the number at img_size, scaled (at least 1)."""
        return tuple(
            max(1, round(n * s / s0)) for n, s, s0 in zip(self.num_points, image_size, self.img_size, strict=True)
        )

    @property
    def symbolic_min_size(self) -> tuple[int, int]:
        """The smallest sides with at least 2 points each: a side of one point is specialised by torch.export."""
        smallest = [
            next(s for s in range(1, 8 * s0) if self.points_for((s, s))[i] >= 2) for i, s0 in enumerate(self.img_size)
        ]
        return (smallest[0], smallest[1])

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint made at another img_size carries that size's grid: use this model's (same shape)."""
        grid = state_dict.get("point_coord")
        if grid is not None and grid.shape == self.point_coord.shape:
            state_dict = {**state_dict, "point_coord": self.point_coord.detach().clone()}
        return state_dict

    # The forward pass, top-down.
    def progressive_sampling(self, x: Tensor) -> Iterator[tuple[Tensor, tuple[int, int]]]:
        """The tokens after each sampling iteration (B, N, D), with the points' grid (n_h, n_w)."""
        self.check_input(x)
        fmap = self.stem(x)
        if in_graph():  # the number of points and the grid follow the traced or symbolic sizes
            size = (fmap.shape[-2], fmap.shape[-1])
            sides = zip(self.num_points, x.shape[-2:], self.img_size, strict=True)
            grid = tuple(rounded_points(num, side, own) for num, side, own in sides)
            point = grid_points(*grid, *size, fmap.device, fmap.dtype)
            scale = torch.stack([size_tensor(side) for side in size]).to(device=fmap.device, dtype=fmap.dtype)
        else:  # Python integers, the grid cached per size
            size = (int(fmap.shape[-2]), int(fmap.shape[-1]))
            grid = self.points_for((int(x.shape[-2]), int(x.shape[-1])))
            point = initial_points(*grid, *size, fmap.device, fmap.dtype)
            scale = torch.tensor(size, dtype=fmap.dtype, device=fmap.device)
        point = point.expand(x.shape[0], -1, -1)
        offset, tokens = torch.zeros_like(point), None
        for layer in self.ps_layers:
            tokens, point = layer.tokens(fmap, point, offset, scale, tokens)
            tokens = self.run_blocks([layer.transformer_layer], tokens)
            if layer.offset_layer is not None:
                offset = layer.offset_layer(tokens)
            yield tokens, grid

    def iter_tokens(self, x: Tensor) -> Iterator[tuple[Tensor, tuple[int, int]]]:
        """The tokens after every block (sampling iterations, then transformer layers), with the grid."""
        for tokens, grid in self.progressive_sampling(x):
            yield tokens, grid
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for layer in self.trans_layers:
            tokens = self.run_blocks([layer], tokens)
            yield tokens, grid

    def forward_features(self, x: Tensor) -> Tensor:
        *_, (tokens, _) = self.iter_tokens(x)
        if not self.trans_layers and self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(tokens)

    def iter_features(self, x: Tensor) -> Iterator[Tensor]:
        """The point tokens after every block as (B, D, n_h, n_w) maps (the points are x-major)."""
        for tokens, (num_h, num_w) in self.iter_tokens(x):
            tokens = tokens[:, tokens.shape[1] - num_h * num_w :]
            yield tokens.reshape(tokens.shape[0], num_w, num_h, -1).permute(0, 3, 2, 1)

    def blocks_in_depth_order(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self._block_names()]


def _register(name: str, points: int, embed_dim: int, depth: int, heads: int, stem_channels: int, **paper) -> None:
    register_model(
        name,
        PSViT,
        dict(num_point_h=points, num_point_w=points, embed_dim=embed_dim, depth=depth, num_heads=heads,
             stem_channels=stem_channels),
        "PS-ViT: Yue et al. 2021, github.com/yuexy/PS-ViT (a63a397)",
        tiny=dict(embed_dim=16, depth=3, num_iters=2, num_heads=2, stem_width=8, stem_channels=16),
        preprocess=Preprocess((3, 224, 224), crop_pct=0.9, interpolation="bicubic"),
        paper=paper,
    )  # fmt: skip


# The official release's variants (models/ps_vit.py) and B/10 from the paper's table 1 / the README.
_register("ps_vit_ti_14", 14, 192, 12, 3, 192, top1=75.6)
_register("ps_vit_b_10", 10, 384, 14, 6, 256, top1=80.6)
_register("ps_vit_b_14", 14, 384, 14, 6, 256, top1=81.7)
_register("ps_vit_b_16", 16, 384, 14, 6, 256)
_register("ps_vit_b_18", 18, 384, 14, 6, 256, top1=82.3)
