"""Swin checkpoints from the official release (microsoft/Swin-Transformer) and from HF transformers.

Both differ from timm's layout (vitlab's own) in where patch merging sits (at the end of stage i
instead of the start of stage i + 1) and may carry the relative-position index and the
shifted-window mask as buffers. Those buffers are derived data: each is checked against the one
the block's window plan gives (or, for a checkpoint made for another size, the plan of the square
window and map its shape implies) and dropped, so a checkpoint from a modified model is refused
instead of silently loading into a model that computes something else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vitlab.checkpoint import CheckpointError
from vitlab.layers.grouping.windows import WindowAttention, shifted_window_mask, window_geometry
from vitlab.layers.position import relative_position_index
from vitlab.layouts import StateDict, fuse_qkv, register_config_reader, register_converter, rename_keys
from vitlab.layouts.hf import config_arguments, transformer_block_rules
from vitlab.models.swin import SwinTransformer

_BUFFERS = ("relative_position_index", "attn_mask")


def _block_attention(model: nn.Module, key: str) -> WindowAttention | None:
    """The window attention that owns the buffer `key` (official: on the block or on its `attn`)."""
    try:
        module = model.get_submodule(key.rsplit(".", 1)[0])
    except AttributeError:
        return None
    module = module if isinstance(module, WindowAttention) else getattr(module, "attn", None)
    return module if isinstance(module, WindowAttention) else None


def _standard_buffers(key: str, value: Tensor, attn: WindowAttention | None) -> list[Tensor]:
    """The buffers a standard Swin holds under `key`: the block's own plan at its map size, and the
    plan of the square window (and square map) that the buffer's shape implies."""
    candidates = []
    if key.endswith("relative_position_index"):
        if attn is not None:
            candidates.append(relative_position_index(attn.window_size))
        side = round(value.shape[0] ** 0.5)
        candidates.append(relative_position_index((side, side)))
        return candidates
    if attn is not None and attn.resolution is not None:  # attn_mask: (num_windows, N, N)
        own = attn.grouping.plan(attn.resolution, torch.device("cpu")).mask
        if own is not None:
            candidates.append(own)
    if value.ndim == 3:
        side, per_row = round(value.shape[1] ** 0.5), round(value.shape[0] ** 0.5)
        square = window_geometry((side * per_row,) * 2, (side, side), (side // 2, side // 2))
        if any(square.shift):
            candidates.append(shifted_window_mask(square.padded, square.window, square.shift))
    return candidates


def _drop_derived(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Remove `relative_position_index` / `attn_mask` after checking each is the standard buffer."""
    out = {}
    for key, value in state_dict.items():
        if not key.endswith(_BUFFERS):
            out[key] = value
            continue
        standard = _standard_buffers(key, value, _block_attention(model, key))
        if not any(c.shape == value.shape and torch.equal(c.to(value.dtype), value.cpu()) for c in standard):
            raise CheckpointError(
                f"{key} {tuple(value.shape)} differs from the buffer a standard Swin computes (relative index "
                f"from meshgrid 'ij', or the -100 shifted-window mask), which vitlab recomputes instead of "
                f"loading: the checkpoint comes from a modified model and would not load faithfully"
            )
    return out


def _merging_to_next_stage(state_dict: StateDict) -> StateDict:
    """Merging at the end of stage i (official, HF) opens stage i + 1 in timm's layout."""
    return rename_keys(
        state_dict,
        [(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.")],
    )


def _is_official(state_dict: StateDict) -> bool:
    """A Swin (blocks under `layers.i.blocks.j`) with the official markers: merging in stage 0, buffers, `head`."""
    if not any(k.startswith("layers.") and ".blocks." in k for k in state_dict):
        return False
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
        *transformer_block_rules(block, to, attention="self"),
        (block + r"attention\.(?:self|relative_position_bias)\.relative_position_", to + "attn.relative_position_"),
        (r"^(?:swin\.)?encoder\.layers\.(\d+)\.downsample\.", r"layers.\1.downsample."),
        (r"^(?:swin\.)?layernorm\.", "norm."),
        (r"^classifier\.", "head.fc."),
    ]
    state_dict = _drop_derived(rename_keys(state_dict, rules), model)
    return fuse_qkv(_merging_to_next_stage(state_dict))


@register_config_reader(SwinTransformer)
def read_hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `SwinConfig` (eps, sizes, windows, classes)."""
    fields = dict(embed_dim="embed_dim", window_size="window_size", mlp_ratio="mlp_ratio")
    out = config_arguments(config, {**fields, "depths": "depths", "num_heads": "num_heads"})
    for key in ("depths", "num_heads"):
        if key in out:
            out[key] = tuple(out[key])
    return out
