"""Spatial-reduction attention: every token attends to a coarser copy of the map (PVT v1 and v2).

PVT v1 (Wang et al. 2021, section 3.3, eq. 2-4) keeps global attention affordable at stride 4 by
reducing the keys and values, not the queries: the map is cut by a strided convolution of kernel
and stride R (the "reduction ratio", 8/4/2/1 over the four stages), normalised by LayerNorm, and
projected to K and V; the H*W queries then attend to H*W/R^2 keys. PVT v2 (Wang et al. 2022,
section 3.1) adds *linear* spatial reduction (PVT-v2-b2-li): adaptive average pooling to a fixed
7x7 map, a 1x1 convolution, LayerNorm and GELU, so the cost is linear in the number of tokens.

This is not a `Grouping`: queries are never grouped, and the keys come out of learned layers, so
there is nothing size-dependent to plan or cache. It is one layer that both PVT versions share.
Parameter names are the references' (`q`, `kv` stacked as [k; v], `sr`, `norm`, `proj`), which
the official releases and timm's pvt_v2 use alike.

Sizes: the strided reduction floors, as the references' convolution does (a 30x30 map at R = 8
gives 3x3 keys from its top-left 24x24 pixels' worth of tokens), so a map needs at least R
tokens per side; linear reduction pools any map to 7x7 (a map smaller than 7 is repeated).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlab.layers.attention import AttentionLayer, attend


def pooling_matrix(n: int | Tensor, out: int, like: Tensor) -> Tensor:
    """(out, n): row i averages the inputs [floor(i n / out), ceil((i + 1) n / out)), adaptive average
    pooling's bins along one side, from a side `n` that may be the ONNX tracer's 0-dim size."""
    i = torch.arange(out, device=like.device)[:, None]
    j = torch.arange(n, device=like.device)[None, :]
    start, end = i * n // out, ((i + 1) * n + out - 1) // out
    inside = ((j >= start) & (j < end)).to(like.dtype)
    return inside / (end - start).to(like.dtype)


def adaptive_average_pool(x: Tensor, out: int) -> Tensor:
    """`F.adaptive_avg_pool2d(x, out)` of an NCHW map as two products with pooling matrices (up to rounding).

    Used while the ONNX tracer runs: torch.onnx writes adaptive pooling only for a fixed input shape,
    batch included, while these products hold for any traced size."""
    rows, cols = pooling_matrix(x.shape[-2], out, x), pooling_matrix(x.shape[-1], out, x)
    return rows @ (x @ cols.transpose(0, 1))


class SpatialReductionAttention(AttentionLayer):
    """Multi-head attention whose keys and values come from a spatially reduced map.

    Input: a (B, H, W, C) map, or (B, N, C) tokens when nothing is reduced (`sr_ratio` 1 and not
    `linear`: plain global attention, which is how PVT v1's last stage also sees its class token).
    The output has the input's shape. `norm_eps` is the reduction's LayerNorm eps: 1e-5 in the
    official code and timm (PyTorch's default), HF's `layer_norm_eps` (1e-6) in transformers.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        linear: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
        pool_size: int = 7,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.linear = linear
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool: nn.Module | None = nn.AdaptiveAvgPool2d(pool_size) if linear else None
        self.act: nn.Module | None = nn.GELU() if linear else None
        self.sr: nn.Module | None = None
        self.norm: nn.Module | None = None
        if linear or sr_ratio > 1:
            kernel = 1 if linear else sr_ratio
            self.sr = nn.Conv2d(dim, dim, kernel_size=kernel, stride=kernel)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    @property
    def reduces(self) -> bool:
        return self.sr is not None

    def reduce(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> the (B, M, C) tokens keys and values are projected from."""
        x = x.permute(0, 3, 1, 2)
        if self.pool is not None and torch.jit.is_tracing():
            x = adaptive_average_pool(x, self.pool.output_size)
        elif self.pool is not None:
            x = self.pool(x)
        elif min(x.shape[-2:]) < self.sr_ratio:
            raise ValueError(
                f"spatial reduction by {self.sr_ratio} needs maps of at least {self.sr_ratio}x{self.sr_ratio} "
                f"tokens, got {x.shape[-2]}x{x.shape[-1]}"
            )
        x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        return self.act(x) if self.act is not None else x

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        if x.ndim == 4:
            tokens = x.flatten(1, 2)
        elif self.reduces:
            raise ValueError(f"spatial reduction needs a (B, H, W, C) map, got tokens of shape {tuple(shape)}")
        else:
            tokens = x
        B, N, C = tokens.shape
        source = self.reduce(x) if self.reduces else tokens
        q = self.q(tokens).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(source).view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout_p = self.attn_drop if self.training else 0.0
        y = attend(q, k, v, dropout_p=dropout_p, store=self.attention_store)
        y = self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, N, C)))
        return y.view(shape)
