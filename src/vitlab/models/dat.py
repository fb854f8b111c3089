"""DAT, the Deformable Attention Transformer (Xia et al., CVPR 2022, "Vision Transformer with Deformable Attention").

A four-stage pyramid (a 4x4 patch stem, then 2x2 stride-2 convolutions between stages, each with a
LayerNorm) whose stages mix three kinds of pre-norm transformer blocks, as the released configurations
spell them: "L" local attention in 7x7 windows, "S" shifted-window attention (the map rolled by
ceil(7 / 2) = 4, not Swin's 3) and "D" deformable attention (section 3.2). The released models use
L/S pairs in stages 1-2 and L/D pairs in stages 3-4.

Deformable attention (section 3.2): the queries q = W_q x of every token go, one group of channels
at a time, through an offset network (depthwise k x k conv, LayerNorm, GELU, 1x1 conv to 2
channels; k = 9, 7, 5, 3 by stage); the offsets, bounded by tanh and the offset range factor, move
a uniform grid of reference points, and keys and values are projections of the input sampled
bilinearly at the moved points (`layers.grouping.deformable`). Every query attends over all sampled
keys, with a continuous relative position bias read bilinearly from a (heads, 2H - 1, 2W - 1)
table at the displacement between the query and each sampled point.

The parameter layout is that of the CVPR 2022 release (LeapLabTHU/DAT, tag CVPR2022, commit
566a593; the later DAT++ code on that repository's main branch is another architecture), so its
checkpoints load as they are: a stage keeps its norms, attentions and MLPs in per-stage lists
(`stages.{i}.layer_norms.{2d, 2d+1}`, `stages.{i}.attns.{d}`, `stages.{i}.mlps.{d}`). A
`DATBlock` is a view of the parts of one block, not registered as a module, so the keys stay the
release's. The window blocks keep the release's persistent buffers (`relative_position_index`,
`attn_mask`) because its checkpoints hold them; the forward pass takes the same values from the
plan cache (or, under torch.compile and the ONNX tracer, from the plan built in the graph).

Any input of at least 32x32 pixels works (the 4x4 stem and three 2x2 steps floor odd sides, as in
the release, down to a map of at least 1x1); the release is fixed to the size it was built for.
Choices where it cannot run:
- window blocks zero-pad the map at the bottom/right to a multiple of the window and crop back (nothing at
  the released sizes); a side no longer than the window is one unshifted window (Swin's code and rule);
- the deformable bias table is read as is at any size: it is indexed by normalised displacements,
  so it is a function on [-1, 1]^2 whatever the map size (the release would need its table resized).
The released models' initialisation is PyTorch's default (the release's `reset_parameters` loops
over parameters, not modules, so it changes nothing) and is kept. Left out: the release's unused
options (offset stride > 1, `no_off`, `fixed_pe`, `dwc_pe`, convolutional MLPs and patches,
offset range factor <= 0); DAT++.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.checkpoint import CheckpointError
from vitlab.layers import DropPath, drop_path_rates
from vitlab.layers.attention import AttentionLayer, PositionSampler, attend, record_positions
from vitlab.layers.grouping import Size2, padded_size
from vitlab.layers.grouping.deformable import DeformablePoints
from vitlab.layers.grouping.windows import Windows, shifted_window_mask, window_bias
from vitlab.layers.heads import pool_features
from vitlab.layers.position import relative_position_index, resize_relative_position_table
from vitlab.models.pyramid import Pyramid
from vitlab.registry import Preprocess, register_model


class ChannelNorm(nn.Module):
    """LayerNorm over channels, held as `.norm` like the release's LayerNormProxy (which fixes the key names).

    The map is channels-last, or NCHW with `channels_first` (inside the offset network).
    """

    def __init__(self, dim: int, channels_first: bool = False, eps: float = 1e-5):
        super().__init__()
        self.channels_first = channels_first
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_first:
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


class ConvNorm(nn.Sequential):
    """A strided convolution and a channel LayerNorm: the patch stem (`patch_proj`, from the NCHW image)
    and the downsampling between stages (`down_projs.{i}`, channels-last in); channels-last out."""

    def __init__(self, conv: nn.Conv2d, eps: float, channels_last_input: bool):
        super().__init__(conv, ChannelNorm(conv.out_channels, eps=eps))
        self.channels_last_input = channels_last_input

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last_input:
            x = x.permute(0, 3, 1, 2)
        return self[1](self[0](x).permute(0, 2, 3, 1))


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 convolution (the release's q, k, v and output projections) applied to a channels-last map."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class TransformerMLP(nn.Module):
    """Linear, GELU, Linear (with dropout), under the release's names `chunk.linear1` / `chunk.linear2`."""

    def __init__(self, dim: int, expansion: float, drop: float):
        super().__init__()
        hidden = int(dim * expansion)
        self.chunk = nn.Sequential()
        self.chunk.add_module("linear1", nn.Linear(dim, hidden))
        self.chunk.add_module("act", nn.GELU())
        self.chunk.add_module("drop1", nn.Dropout(drop))
        self.chunk.add_module("linear2", nn.Linear(hidden, dim))
        self.chunk.add_module("drop2", nn.Dropout(drop))

    def forward(self, x: Tensor) -> Tensor:
        return self.chunk(x)


class LocalAttention(AttentionLayer):
    """Window attention with a learned relative position bias ("L"), or on the map rolled by `shift` ("S").

    Takes and returns a (B, H, W, C) map. As Swin's W-MSA / SW-MSA (eq. 4), under the release's
    names (`proj_qkv`, `proj_out`); shifted windows mask token pairs from non-adjacent regions with
    -100 as the release does. `resolution` is the map at the model's `img_size`, for which the
    persistent buffers are made (the checkpoint layout); the forward pass uses the plan's copies.
    """

    def __init__(self, dim: int, heads: int, window: int, shift: int, resolution: Size2, attn_drop: float, drop: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.window_size = (window, window)
        self.grouping = Windows(self.window_size, (shift, shift))
        self.proj_qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.01)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        if shift:
            padded = padded_size(resolution, self.window_size)
            self.register_buffer("attn_mask", shifted_window_mask(padded, self.window_size, (shift, shift)))

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        plan = self.grouping.plan((H, W), x.device)
        N = plan.window_area
        qkv = self.proj_qkv(self.grouping.group(x, plan)).view(-1, N, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table.index_select(0, plan.index).view(N, N, -1).permute(2, 0, 1)
        bias = window_bias(bias, plan, B, q.dtype)
        out = attend(q, k, v, bias=bias, dropout_p=self.attn_drop if self.training else 0.0, store=self.attention_store)
        out = self.proj_drop(self.proj_out(out.transpose(1, 2).reshape(-1, N, C)))
        return self.grouping.ungroup(out, plan)


class DeformableAttention(AttentionLayer, PositionSampler):
    """Deformable multi-head attention ("D", DAT section 3.2) on a (B, H, W, C) map.

    Under `capture_attention(model, positions=True)` it records where it sampled: (B, groups, Hk,
    Wk, 2) (x, y) pixel coordinates of the attended map (`DeformablePoints.to_pixels`; the map spans
    [-0.5, W - 0.5]); a position at stride s lies at about (p + 0.5) * s - 0.5 in the image.
    """

    def __init__(
        self, dim: int, heads: int, groups: int, resolution: Size2, offset_kernel: int, offset_range_factor: float,
        attn_drop: float, drop: float, eps: float,
    ):  # fmt: skip
        super().__init__()
        if not groups or heads % groups:
            raise ValueError(f"deformable attention needs heads ({heads}) divisible into offset groups ({groups})")
        self.heads, self.groups = heads, groups
        self.head_dim = dim // heads
        self.sampling = DeformablePoints(groups, offset_range_factor)
        cg = dim // groups
        self.conv_offset = nn.Sequential(
            nn.Conv2d(cg, cg, offset_kernel, 1, offset_kernel // 2, groups=cg),
            ChannelNorm(cg, channels_first=True, eps=eps),
            nn.GELU(),
            nn.Conv2d(cg, 2, 1, bias=False),
        )
        self.proj_q, self.proj_k, self.proj_v, self.proj_out = (nn.Conv2d(dim, dim, 1) for _ in range(4))
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(drop)
        self.rpe_table = nn.Parameter(torch.zeros(heads, 2 * resolution[0] - 1, 2 * resolution[1] - 1))
        nn.init.trunc_normal_(self.rpe_table, std=0.01)

    def relative_bias(self, size: Size2, positions: Tensor, batch: int) -> Tensor:
        """The continuous relative position bias (batch, heads, H * W, Hk * Wk).

        Each query's reference point minus each sampled position, halved into [-1, 1], indexes the
        table bilinearly (align_corners=True), per group with its own heads, as the release does.
        """
        queries = self.sampling.plan(size, positions.device).points.to(positions.dtype).reshape(1, -1, 1, 2)
        displacement = (queries - positions.flatten(1, 2).unsqueeze(1)).mul(0.5)
        table = self.rpe_table.to(positions.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        table = table.reshape(batch * self.groups, self.heads // self.groups, *self.rpe_table.shape[1:])
        bias = F.grid_sample(table, displacement.flip(-1), mode="bilinear", align_corners=True)
        return bias.reshape(batch, self.heads, *bias.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        q = pointwise(self.proj_q, x)
        offsets = self.conv_offset(self.sampling.group(q))  # (B * groups, 2, Hk, Wk)
        plan = self.sampling.plan(offsets.shape[-2:], x.device)
        positions = self.sampling.positions(offsets, plan)
        pixels = self.sampling.to_pixels(positions, (H, W)).view(B, self.groups, *plan.size, 2)
        record_positions(self.position_store, pixels)
        sampled = self.sampling.ungroup(self.sampling.sample(self.sampling.group(x), positions)).flatten(1, 2)

        def heads(t: Tensor) -> Tensor:  # (B, tokens, C) -> (B, heads, tokens, head_dim)
            return t.reshape(B, -1, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q), heads(pointwise(self.proj_k, sampled)), heads(pointwise(self.proj_v, sampled))
        bias = self.relative_bias((H, W), positions, B)
        dropout_p = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, bias=bias, dropout_p=dropout_p, store=self.attention_store)
        return self.proj_drop(pointwise(self.proj_out, out.transpose(1, 2).reshape(B, H, W, C)))


class DATBlock(nn.Module):
    """One block: x + drop_path(attn(LN(x))), then x + drop_path(MLP(LN(x))).

    A view of parts that the stage owns (the release keeps them in per-stage lists); the stage
    holds blocks in a plain list, so they never add a level to the state-dict keys.
    """

    def __init__(self, norm1: nn.Module, attn: nn.Module, norm2: nn.Module, mlp: nn.Module, drop_path: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp, self.drop_path = norm1, attn, norm2, mlp, drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def block_attention(
    kind: str, dim: int, heads: int, window: int, resolution: Size2, groups: int | None, offset_kernel: int,
    offset_range_factor: float, attn_drop: float, drop: float, eps: float,
) -> nn.Module:  # fmt: skip
    """The attention of a block of `kind`: "L" (windows), "S" (windows rolled by ceil(window / 2)), "D" (deformable)."""
    if kind == "D":
        return DeformableAttention(
            dim, heads, groups, resolution, offset_kernel, offset_range_factor, attn_drop, drop, eps
        )
    shift = math.ceil(window / 2) if kind == "S" else 0
    return LocalAttention(dim, heads, window, shift, resolution, attn_drop, drop)


class DATStage(nn.Module):
    """The blocks of one stage around their attentions, under the release's names (per-stage lists)."""

    def __init__(self, dim: int, attns: Sequence[nn.Module], mlp_ratio: float, drop: float,
                 drop_paths: Sequence[float], eps: float):  # fmt: skip
        super().__init__()
        depth = len(attns)
        self.layer_norms = nn.ModuleList(ChannelNorm(dim, eps=eps) for _ in range(2 * depth))
        self.mlps = nn.ModuleList(TransformerMLP(dim, mlp_ratio, drop) for _ in range(depth))
        self.attns = nn.ModuleList(attns)
        self.drop_path = nn.ModuleList(DropPath(rate) for rate in drop_paths)
        norms = self.layer_norms
        self.blocks = [
            DATBlock(norms[2 * d], self.attns[d], norms[2 * d + 1], self.mlps[d], self.drop_path[d])
            for d in range(depth)
        ]


class DAT(Pyramid):
    """DAT; `forward_features` returns the normalised final map (B, H/32, W/32, C).

    `stage_spec` spells each stage's blocks ("LS", "LDLDLD", ...), which also gives its depth;
    `groups` is the number of offset groups of the stages that have "D" blocks (None elsewhere).
    `window_sizes` and `offset_kernel_sizes` are per stage; `offset_range_factor` is the bound s
    of the offsets (2 in every released model). `img_size` sizes the deformable bias tables and
    the window buffers, as in the release.
    """

    min_input_size = 32  # the 4x4 stem and three 2x2 stride-2 convolutions, without padding
    input_conv = "patch_proj.0.weight"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        patch_size: int = 4,
        dims: Sequence[int] = (96, 192, 384, 768),
        heads: Sequence[int] = (3, 6, 12, 24),
        stage_spec: Sequence[str] = ("LS", "LS", "LDLDLD", "LD"),
        groups: Sequence[int | None] = (None, None, 3, 6),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        offset_kernel_sizes: Sequence[int] = (9, 7, 5, 3),
        offset_range_factor: float = 2.0,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        per_stage = (dims, heads, stage_spec, groups, window_sizes, offset_kernel_sizes)
        if any(len(arg) != 4 for arg in per_stage):
            raise ValueError(
                f"dims, heads, stage_spec, groups, window_sizes, offset_kernel_sizes need 4 entries: {per_stage}"
            )
        if any(set(spec) - set("LSD") for spec in stage_spec):
            raise ValueError(f"stage_spec may only use 'L', 'S' and 'D', got {tuple(stage_spec)}")
        if any(2 * a != b for a, b in zip(dims[:-1], dims[1:], strict=True)):
            raise ValueError(f"each stage doubles the width in DAT, got dims {tuple(dims)}")
        self.patch_proj = ConvNorm(nn.Conv2d(in_chans, dims[0], patch_size, patch_size), norm_eps, False)
        rates = iter(drop_path_rates(drop_path_rate, sum(len(spec) for spec in stage_spec)))
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        if min(grid) < 8:  # the stage-4 position table is made for img_size / (patch_size * 8) tokens a side
            raise ValueError(f"DAT needs img_size of at least {patch_size * 8} (patch_size x 8), got {img_size}")
        stages = []
        for i, (dim, spec) in enumerate(zip(dims, stage_spec, strict=True)):
            if dim % heads[i]:
                raise ValueError(f"stage {i + 1}: dims ({dim}) is not divisible by heads ({heads[i]})")
            resolution = (grid[0] // 2**i, grid[1] // 2**i)
            attention = dict(dim=dim, heads=heads[i], window=window_sizes[i], resolution=resolution, groups=groups[i])
            attention.update(offset_kernel=offset_kernel_sizes[i], offset_range_factor=offset_range_factor)
            attention.update(attn_drop=attn_drop_rate, drop=drop_rate, eps=norm_eps)
            attns = [block_attention(kind, **attention) for kind in spec]
            drop_paths = [next(rates) for _ in spec]
            stages.append(DATStage(dim, attns, mlp_ratio, drop_rate, drop_paths, norm_eps))
        self.stages = nn.ModuleList(stages)
        self.down_projs = nn.ModuleList(
            ConvNorm(nn.Conv2d(dims[i], dims[i + 1], 2, 2, bias=False), norm_eps, True) for i in range(3)
        )
        self.cls_norm = ChannelNorm(dims[-1], eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.set_feature_info(dims, [f"stages.{i}" for i in range(4)], patch_size)
        self.add_classifier("cls_head", dims[-1])

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.patch_proj(x)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        downs = [None, *self.down_projs]
        return [(down, stage.blocks) for down, stage in zip(downs, self.stages, strict=True)]

    def forward_features(self, x: Tensor) -> Tensor:
        for fmap in self.iter_stages(x):
            x = fmap
        return self.cls_norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(pool_features(x, "avg", "NHWC"))
        return x if pre_logits else self.cls_head(x)

    def no_weight_decay(self) -> set[str]:
        """The release's `no_weight_decay_keywords`: the relative-position tables."""
        tables = ("relative_position_bias_table", "rpe_table")
        return {name for name, _ in self.named_parameters() if name.endswith(tables)}

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a checkpoint made for another input size or window, as the release's `load_pretrained` does.

        Window tables of another window are resized bicubically, deformable bias tables of another
        map size too (F.interpolate, bicubic), and the size-derived buffers (`relative_position_index`,
        `attn_mask`) are this model's own. Keys that belong to no such module are left for the strict
        load to report.
        """
        out = dict(state_dict)
        own = self.state_dict()
        for key, value in state_dict.items():
            if key not in own or own[key].shape == value.shape:
                continue
            name = key.rpartition(".")[2]
            if name in ("relative_position_index", "attn_mask"):
                out[key] = own[key]
            elif name == "relative_position_bias_table" and value.ndim == 2 and value.shape[1] == own[key].shape[1]:
                window = self.get_submodule(key.rpartition(".")[0]).window_size
                try:
                    out[key] = resize_relative_position_table(value, window)
                except ValueError as err:
                    raise CheckpointError(f"{key}: {err}") from err
            elif name == "rpe_table" and value.ndim == 3 and value.shape[0] == own[key].shape[0]:
                out[key] = F.interpolate(value.unsqueeze(0), own[key].shape[1:], mode="bicubic").squeeze(0)
        return out


_DAT = "DAT: Xia et al. 2022 (LeapLabTHU/DAT, tag CVPR2022 = 566a593)"
_DEEP = ("LS", "LS", "LD" * 9, "LD")
# name: (dims, heads, stage_spec, groups, drop_path_rate, README top-1 at 224)
_VARIANTS = {
    "dat_tiny": ((96, 192, 384, 768), (3, 6, 12, 24), ("LS", "LS", "LDLDLD", "LD"), (None, None, 3, 6), 0.2, 82.0),
    "dat_small": ((96, 192, 384, 768), (3, 6, 12, 24), _DEEP, (None, None, 3, 6), 0.3, 83.7),
    "dat_base": ((128, 256, 512, 1024), (4, 8, 16, 32), _DEEP, (None, None, 4, 8), 0.5, 84.0),
}
for _name, (_dims, _heads, _spec, _groups, _dpr, _top1) in _VARIANTS.items():
    register_model(
        _name,
        DAT,
        dict(dims=_dims, heads=_heads, stage_spec=_spec, groups=_groups, drop_path_rate=_dpr),
        f"{_DAT}, configs/{_name}.yaml",
        tiny=dict(dims=(8, 16, 32, 64), heads=(1, 2, 2, 4), stage_spec=("LS", "LS", "LD", "LD"), groups=(1, 1, 2, 2)),
        preprocess=Preprocess((3, 224, 224), crop_pct=0.875, interpolation="bicubic"),
        paper=dict(top1=_top1),
    )
