"""ViT and DeiT checkpoints from HF transformers and from the JAX release (google-research/vision_transformer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.layouts import StateDict, fuse_qkv, register_config_reader, register_converter, rename_keys
from vitlab.layouts.hf import config_arguments, transformer_block_rules
from vitlab.models.vit import VisionTransformer

_PREFIX = r"^(?:vit\.|deit\.)?"


def _is_hf(state_dict: StateDict) -> bool:
    return any(".embeddings.patch_embeddings." in k or k.startswith("embeddings.") for k in state_dict)


@register_converter(VisionTransformer, "hf", _is_hf)
def convert_hf(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' ViT/DeiT: the files `save_pretrained` writes, and the in-memory names of 5.x."""
    rules = [
        (_PREFIX + r"embeddings\.cls_token$", "cls_token"),
        (_PREFIX + r"embeddings\.distillation_token$", "dist_token"),
        (_PREFIX + r"embeddings\.position_embeddings$", "pos_embed"),
        (_PREFIX + r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        *transformer_block_rules(_PREFIX + r"(?:encoder\.layer|layers)\.(\d+)\.", r"blocks.\1."),
        (_PREFIX + r"layernorm\.", "norm."),
        (r"^(?:classifier|cls_classifier)\.", "head."),
        (r"^distillation_classifier\.", "head_dist."),
    ]
    return fuse_qkv(rename_keys(state_dict, rules))


@register_config_reader(VisionTransformer)
def read_hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `ViTConfig` / `DeiTConfig` (eps, sizes, classes)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"the HF config uses hidden_act={config['hidden_act']!r}; vitlab's ViT uses the exact GELU ('gelu')"
        )
    out = config_arguments(
        config, dict(hidden_size="embed_dim", num_hidden_layers="depth", num_attention_heads="num_heads")
    )
    if "intermediate_size" in config and "hidden_size" in config:
        out["mlp_ratio"] = config["intermediate_size"] / config["hidden_size"]
    if "DeiTForImageClassificationWithTeacher" in config.get("architectures", []):
        out["distilled"] = True
    return out


def _is_jax(state_dict: StateDict) -> bool:
    return any("Transformer/" in k for k in state_dict)


@register_converter(VisionTransformer, "jax", _is_jax)
def convert_jax(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The `.npz` files of google-research/vision_transformer (Flax names, HWIO / (in, heads, dim) kernels)."""
    w = {k.removeprefix("opt/target/"): v for k, v in state_dict.items()}
    # Two generations of the release number their sub-modules differently.
    attn, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if any("MultiHeadDotProductAttention_0" in k for k in w)
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    out = {
        "patch_embed.proj.weight": w.pop("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": w.pop("embedding/bias"),
        "cls_token": w.pop("cls"),
        "pos_embed": w.pop("Transformer/posembed_input/pos_embedding"),
        "norm.weight": w.pop("Transformer/encoder_norm/scale"),
        "norm.bias": w.pop("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in w:
        out["head.weight"] = w.pop("head/kernel").T
        out["head.bias"] = w.pop("head/bias")
    depth = len({k.split("/")[1] for k in w if k.startswith("Transformer/encoderblock_")})
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for name, target in (("LayerNorm_0", "norm1"), (ln2, "norm2")):
            out[f"{dst}{target}.weight"] = w.pop(f"{src}{name}/scale")
            out[f"{dst}{target}.bias"] = w.pop(f"{src}{name}/bias")
        qkv = [w.pop(f"{src}{attn}/{n}/kernel").flatten(1).T for n in ("query", "key", "value")]
        out[f"{dst}attn.qkv.weight"] = torch.cat(qkv)
        out[f"{dst}attn.qkv.bias"] = torch.cat(
            [w.pop(f"{src}{attn}/{n}/bias").flatten() for n in ("query", "key", "value")]
        )
        out[f"{dst}attn.proj.weight"] = w.pop(f"{src}{attn}/out/kernel").flatten(0, 1).T
        out[f"{dst}attn.proj.bias"] = w.pop(f"{src}{attn}/out/bias")
        for j, target in ((0, "fc1"), (1, "fc2")):
            out[f"{dst}mlp.{target}.weight"] = w.pop(f"{src}{mlp}/Dense_{j}/kernel").T
            out[f"{dst}mlp.{target}.bias"] = w.pop(f"{src}{mlp}/Dense_{j}/bias")
    out.update(w)  # anything left (e.g. pre_logits) is reported by the strict load
    return {k: v.contiguous() for k, v in out.items()}
