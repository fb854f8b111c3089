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
(see `layers.local.window_geometry`). Windows are fixed at construction as in the references: a
window larger than a stage's map at `img_size` shrinks to the map (timm's rule), which fixes the
size of that block's relative-position table.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.checkpoint import CheckpointError, StateDict, fuse_qkv, register_converter, rename_keys
from vitlab.layers import DropPath, Mlp, PatchEmbed, drop_path_rates
from vitlab.layers.embed import to_2tuple
from vitlab.layers.local import (
    WindowAttention,
    crop_relative_position_table,
    relative_position_index,
    resize_relative_position_table,
    shifted_window_mask,
    window_geometry,
)
from vitlab.registry import register_model


class SwinBlock(nn.Module):
    """x + (S)W-MSA(LN(x)), then x + MLP(LN(x)), on a (B, H, W, C) map (Swin eq. 3)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        shift_size: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, shift_size, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens (top-left, bottom-left, top-right, bottom-right), LN(4C), Linear(4C -> 2C).

    Odd sides are zero-padded at the bottom/right first, so the output is ceil(H/2) x ceil(W/2).
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        # (B, H/2, row offset, W/2, column offset, C) -> column offset outer, row offset inner: TL, BL, TR, BR.
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Patch merging (stages 2-4) followed by `depth` blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: tuple[int, int],
        downsample: bool,
        drop_path: Sequence[float],
        norm_layer: type[nn.Module],
        **block_kwargs,
    ):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, norm_layer) if downsample else nn.Identity()
        self.resolution = resolution  # of the blocks' map at the model's img_size
        # As in the references, a window larger than the stage's map at img_size shrinks to the map (which
        # sizes the relative-position table). Whether a side is shifted is decided per input instead: a side
        # that fits in one window is not (WindowAttention), so e.g. stage 4 of a 224 model shifts at 448.
        window = tuple(min(w, r) for w, r in zip(window_size, resolution, strict=True))
        half = tuple(w // 2 for w in window)
        self.blocks = nn.Sequential(
            *[
                SwinBlock(
                    out_dim,
                    num_heads,
                    window,
                    (0, 0) if i % 2 == 0 else half,
                    drop_path=drop_path[i],
                    norm_layer=norm_layer,
                    **block_kwargs,
                )
                for i in range(depth)
            ]
        )
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ClassifierHead(nn.Module):
    """Global average pooling of a (B, H, W, C) map, dropout, then `fc` (timm's `head.fc`)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin Transformer; widths double and resolutions halve from stage to stage."""

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
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.img_size = to_2tuple(img_size)
        self.window_size = to_2tuple(window_size)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.num_features = dims[-1]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer=norm_layer)
        grid = [-(-s // p) for s, p in zip(self.img_size, self.patch_embed.patch_size, strict=True)]
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            resolution = tuple(-(-g // 2**i) for g in grid)
            start = sum(depths[:i])
            stages.append(
                SwinStage(
                    dims[max(i - 1, 0)],
                    dims[i],
                    resolution,
                    depth,
                    num_heads[i],
                    self.window_size,
                    downsample=i > 0,
                    drop_path=rates[start : start + depth],
                    norm_layer=norm_layer,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                )
            )
            reduction = self.patch_embed.patch_size[0] * 2**i
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.default_out_indices = tuple(range(len(depths)))
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # Contracts used by training and checkpoint loading.
    classifier_keys = ("head",)

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def adapt_state_dict(self, state_dict: StateDict) -> StateDict:
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

    # The forward pass, top-down.
    def embed(self, x: Tensor) -> Tensor:
        tokens, (h, w) = self.patch_embed(x)
        return tokens.view(x.shape[0], h, w, -1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final (B, H/32, W/32, C) map, normalised."""
        return self.norm(self.layers(self.embed(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Stage outputs as NCHW maps at strides 4, 8, 16, 32 (before any norm: the checkpoints have none
        per stage; the final `norm` belongs to the classifier path)."""
        x = self.embed(x)
        maps = {}
        for i, stage in enumerate(self.layers[: max(indices) + 1]):
            x = stage(x)
            if i in indices:
                maps[i] = x.permute(0, 3, 1, 2).contiguous()
        return [maps[i] for i in indices]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(self.head.fc.weight, std=0.02)
            nn.init.zeros_(self.head.fc.bias)


# Other checkpoint layouts. Both may carry the index and mask buffers, which are derived data: each
# is checked against what vitlab computes for the same window and map size, then dropped.
def _standard_buffers(key: str, model: SwinTransformer, shape: torch.Size) -> list[Tensor]:
    """What a standard Swin holds under `key`: for the model's own block, and for a square map and window."""
    candidates = []
    stage, block = key.split(".")[1], key.split(".")[3]
    try:
        attn = model.layers[int(stage)].blocks[int(block)].attn
        own = attn.layout(model.layers[int(stage)].resolution, torch.device("cpu"))
    except (IndexError, ValueError, AttributeError):
        own = None
    if key.endswith("relative_position_index"):
        if own is not None:
            candidates.append(relative_position_index(attn.window_size))
        side = round(shape[0] ** 0.5)
        candidates.append(relative_position_index((side, side)))
    else:  # attn_mask: (num_windows, N, N)
        if own is not None and own.mask is not None:
            candidates.append(own.mask)
        side, per_row = round(shape[1] ** 0.5), round(shape[0] ** 0.5)
        g = window_geometry((side * per_row,) * 2, (side, side), (side // 2, side // 2))
        if any(g.shift):
            candidates.append(shifted_window_mask(g.padded, g.window, g.shift))
    return candidates


def _drop_derived(state_dict: StateDict, model: SwinTransformer) -> StateDict:
    """Remove `relative_position_index` / `attn_mask` after checking each is the standard buffer."""
    out = {}
    for key, value in state_dict.items():
        if not key.endswith(("relative_position_index", "attn_mask")):
            out[key] = value
            continue
        standard = _standard_buffers(key, model, value.shape)
        if not any(c.shape == value.shape and torch.equal(c.to(value.dtype), value.cpu()) for c in standard):
            raise CheckpointError(
                f"{key} {tuple(value.shape)} differs from the buffer a standard Swin computes (relative index "
                f"from meshgrid 'ij', or the -100 shifted-window mask), which vitlab recomputes instead of "
                f"loading: the checkpoint comes from a modified model and would not load faithfully"
            )
    return out


def _merging_to_next_stage(state_dict: StateDict) -> StateDict:
    """Merging at the end of stage i (official, HF) opens stage i + 1 in timm's layout."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) + 1)
        out[".".join(parts)] = value
    return out


def _is_official(state_dict: StateDict) -> bool:
    return "layers.0.downsample.reduction.weight" in state_dict or any(
        k.endswith(("attn_mask", "attn.relative_position_index")) or k == "head.weight" for k in state_dict
    )


@register_converter(SwinTransformer, "official", _is_official)
def convert_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    """microsoft/Swin-Transformer: merging at the end of stages, `head`, persistent index and mask buffers."""
    state_dict = _merging_to_next_stage(_drop_derived(state_dict, model))
    return rename_keys(state_dict, [(r"^head\.", "head.fc.")])


def _is_hf(state_dict: StateDict) -> bool:
    return any(k.startswith(("swin.", "embeddings.patch_embeddings.", "encoder.layers.")) for k in state_dict)


@register_converter(SwinTransformer, "hf", _is_hf)
def convert_hf(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' Swin: the names `save_pretrained` writes (hub files) and the in-memory names of 5.x."""
    block = r"^(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    to = r"layers.\1.blocks.\2."
    rules = [
        (r"^(?:swin\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^(?:swin\.)?embeddings\.norm\.", "patch_embed.norm."),
        (block + r"layernorm_before\.", to + "norm1."),
        (block + r"layernorm_after\.", to + "norm2."),
        (block + r"attention\.(?:self\.query|q_proj)\.", to + "attn.q."),
        (block + r"attention\.(?:self\.key|k_proj)\.", to + "attn.k."),
        (block + r"attention\.(?:self\.value|v_proj)\.", to + "attn.v."),
        (block + r"attention\.(?:output\.dense|o_proj)\.", to + "attn.proj."),
        (block + r"attention\.(?:self|relative_position_bias)\.relative_position_", to + "attn.relative_position_"),
        (block + r"(?:intermediate\.dense|mlp\.fc1)\.", to + "mlp.fc1."),
        (block + r"(?:output\.dense|mlp\.fc2)\.", to + "mlp.fc2."),
        (r"^(?:swin\.)?encoder\.layers\.(\d+)\.downsample\.", r"layers.\1.downsample."),
        (r"^(?:swin\.)?layernorm\.", "norm."),
        (r"^classifier\.", "head.fc."),
    ]
    state_dict = _drop_derived(rename_keys(state_dict, rules), model)
    return fuse_qkv(_merging_to_next_stage(state_dict))


_SWIN = "Swin Transformer: Liu et al. 2021"
_HUB = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
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
        input_size=(3, _img, _img),
        crop_pct=0.9 if _img == 224 else 1.0,
        url=_HUB.format(f"{_name}.{_tag}"),
        paper=dict(top1=_TOP1[_size]) if _img == 224 and _size in _TOP1 else {},
    )
