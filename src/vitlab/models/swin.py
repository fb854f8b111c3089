"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

An image is cut into 4x4 patches and embedded (section 3.1); four stages of Swin blocks follow,
each block a pre-norm transformer block whose attention is restricted to 7x7 windows, regular in
even blocks and shifted by half a window in odd ones (section 3.2, eq. 3). Between stages, patch
merging concatenates each 2x2 group of tokens and projects 4C -> 2C, halving the resolution and
doubling the width (section 3.1), so the four stages see strides 4, 8, 16 and 32. The final map is
normalised, averaged and classified.

The parameter layout is timm's: the map is kept NHWC, the merging that opens stages 2-4 is
`layers.{i}.downsample`, the classifier is `head.fc`. The official release (merging at the end of
each stage, persistent index and mask buffers) and HF transformers convert on load.

Any input size works: each block pads its map to a multiple of the window and crops back, patch
merging pads odd sides, and a side no longer than the window becomes a single unshifted window
(see `layers.grouping.windows.window_geometry`). Windows are fixed at construction as in the references: a
window larger than a stage's map at `img_size` shrinks to the map (timm's rule), which fixes the
size of that block's relative-position table.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from vitlab.checkpoint import CheckpointError
from vitlab.layers import Mlp, PatchEmbed, drop_path_rates
from vitlab.layers.blocks import PreNormBlock
from vitlab.layers.embed import to_2tuple
from vitlab.layers.grouping import pad_to_multiple
from vitlab.layers.grouping.windows import WindowAttention
from vitlab.layers.heads import ClassifierHead
from vitlab.layers.position import crop_relative_position_table, resize_relative_position_table
from vitlab.models.pyramid import Pyramid, Stage
from vitlab.registry import Preprocess, register_model
from vitlab.weights import timm_weights


def swin_block(
    dim: int,
    num_heads: int,
    window_size: tuple[int, int],
    shift_size: tuple[int, int],
    resolution: tuple[int, int] | None = None,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop: float = 0.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    norm_layer: type[nn.Module] = nn.LayerNorm,
) -> PreNormBlock:
    """x + (S)W-MSA(LN(x)), then x + MLP(LN(x)), on a (B, H, W, C) map (Swin eq. 3)."""
    attn = WindowAttention(dim, num_heads, window_size, shift_size, qkv_bias, attn_drop, drop, resolution)
    return PreNormBlock(dim, attn, Mlp(dim, int(dim * mlp_ratio), drop=drop), drop_path, norm_layer=norm_layer)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens (top-left, bottom-left, top-right, bottom-right), LN(4C), Linear(4C -> 2C).

    Odd sides are zero-padded at the bottom/right first, so the output is ceil(H/2) x ceil(W/2).
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_to_multiple(x, (2, 2), channels_last=True)
        B, H, W, C = x.shape
        # (B, H/2, row offset, W/2, column offset, C) -> column offset outer, row offset inner: TL, BL, TR, BR.
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class SwinTransformer(Pyramid):
    input_conv = "patch_embed.proj.weight"

    """Swin Transformer; widths double and resolutions halve from stage to stage.

    As in the references, a window larger than a stage's map at `img_size` shrinks to the map (which
    sizes that block's relative-position table); `stage_resolutions` records those maps. Whether a
    side is shifted is decided per input instead: a side that fits in one window is not
    (WindowAttention), so e.g. stage 4 of a 224 model shifts at 448.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | tuple[int, int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-5,
    ):
        super().__init__(in_chans, num_classes, img_size)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.window_size = to_2tuple(window_size)
        dims = [embed_dim * 2**i for i in range(len(depths))]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer=norm_layer)
        grid = [-(-s // p) for s, p in zip(self.img_size, self.patch_embed.patch_size, strict=True)]
        self.stage_resolutions = [tuple(-(-g // 2**i) for g in grid) for i in range(len(depths))]
        rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
        stages = []
        for i, (depth, resolution) in enumerate(zip(depths, self.stage_resolutions, strict=True)):
            window = tuple(min(w, r) for w, r in zip(self.window_size, resolution, strict=True))
            half = tuple(w // 2 for w in window)
            common = dict(resolution=resolution, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=proj_drop_rate)
            common.update(attn_drop=attn_drop_rate, norm_layer=norm_layer)
            downsample = PatchMerging(dims[i - 1], dims[i], norm_layer) if i else None
            shifts = [(0, 0) if j % 2 == 0 else half for j in range(depth)]
            blocks = [swin_block(dims[i], num_heads[i], window, s, drop_path=next(rates), **common) for s in shifts]
            stages.append(Stage(downsample, blocks))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(dims[-1])
        self.head = ClassifierHead("NHWC", drop_rate)
        self.set_feature_info(dims, [f"layers.{i}" for i in range(len(depths))], self.patch_embed.patch_size[0])
        self.add_classifier("head.fc", dims[-1])
        self._init_linear_layers()

    def embed(self, x: Tensor) -> Tensor:
        self.check_input(x)
        tokens, (h, w) = self.patch_embed(x)
        return tokens.view(x.shape[0], h, w, -1)

    def stage_parts(self) -> list[tuple[nn.Module | None, Sequence[nn.Module]]]:
        return [(stage.downsample, stage.blocks) for stage in self.layers]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a checkpoint's relative-position tables to this model's windows.

        A table of another window (a 224/window-7 checkpoint in a 384/window-12 model) is resized
        bicubically, as the official fine-tuning code does. Where this model's window was clamped
        to a small stage map at `img_size`, the block only uses the central offsets of the
        checkpoint's larger table, so those are cropped out: the model then computes exactly what
        the checkpoint's model computes at that size.
        """
        out = dict(state_dict)
        for name, module in self.named_modules():
            key = f"{name}.relative_position_bias_table"
            if not isinstance(module, WindowAttention) or key not in out:
                continue
            table, own = out[key], module.relative_position_bias_table
            if table.shape == own.shape or table.ndim != 2 or table.shape[1] != own.shape[1]:
                continue  # equal, or not a table of this model: the strict key check reports it
            try:
                table = resize_relative_position_table(table, self.window_size)
            except ValueError as err:
                raise CheckpointError(f"{key}: {err}") from err
            if module.window_size != self.window_size:
                table = crop_relative_position_table(table, module.window_size, self.window_size)
            out[key] = table
        return out


_SWIN = "Swin Transformer: Liu et al. 2021"
_WIDTHS = {  # size: (embed_dim, depths, num_heads)
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
_TOP1 = {"tiny": 81.3, "small": 83.0, "base": 83.5}  # paper Table 1(a), ImageNet-1k training at 224

# Published weights: the ImageNet-1k-trained release (the paper's Table 1(a)) where there is one,
# else (Swin-L) the ImageNet-22k-pretrained, 1k-fine-tuned one; all as converted by timm.
for _size, _window, _img, _tag in [
    ("tiny", 7, 224, "ms_in1k"),
    ("small", 7, 224, "ms_in1k"),
    ("base", 7, 224, "ms_in1k"),
    ("large", 7, 224, "ms_in22k_ft_in1k"),
    ("base", 12, 384, "ms_in1k"),
    ("large", 12, 384, "ms_in22k_ft_in1k"),
]:
    _dim, _depths, _heads = _WIDTHS[_size]
    _name = f"swin_{_size}_patch4_window{_window}_{_img}"
    register_model(
        _name,
        SwinTransformer,
        dict(img_size=_img, embed_dim=_dim, depths=_depths, num_heads=_heads, window_size=_window),
        _SWIN,
        tiny=dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)),
        preprocess=Preprocess((3, _img, _img), crop_pct=0.9 if _img == 224 else 1.0),
        weights=timm_weights(_name, default=_tag),
        paper=dict(top1=_TOP1[_size]) if _img == 224 and _size in _TOP1 else {},
    )
