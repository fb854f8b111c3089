"""SegFormer checkpoints: the official release (NVlabs/SegFormer, mmseg 0.x) and HF transformers.

vitlab's SegFormer keeps PVT v2's (timm's) names for its MiT encoder under `backbone.` and the
official names for its decoder (`decode_head.linear_c{1-4}.proj`, `linear_fuse.conv` / `.bn`,
`linear_pred`). So:

- official (`backbone.patch_embed1.proj`, `backbone.block1.0.attn.q`, `backbone.norm1`): the
  encoder is renamed as PVT v2's official files are (`layouts/pvt.py`), and the decoder's unused
  `conv_seg` (left by mmseg's BaseDecodeHead, 128 channels) is dropped;
- HF `SegformerForSemanticSegmentation` (`segformer.encoder.block.0.0.attention.self.query`,
  `decode_head.linear_c.0.proj`, `decode_head.linear_fuse`, `decode_head.batch_norm`,
  `decode_head.classifier`), as `save_pretrained` writes it and as transformers 5.x holds it in
  memory (`segformer.stages.0.blocks.0.attention.q_proj`, `decode_head.linear_projections.0`);
  separate key and value projections are stacked into the references' `kv` ([k; v]);
- HF `SegformerForImageClassification` (`nvidia/mit-b0`) into `mit_b*`; the official ImageNet
  `mit_b*.pth` files are PVT v2's official layout and convert through PVT v2's converter.

HF's config reader sets every LayerNorm eps to 1e-5: transformers' Segformer builds its
LayerNorms with PyTorch's default and never reads `layer_norm_eps` (1e-6 in its configs).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.layouts import StateDict, fuse_qkv, register_config_reader, register_converter, rename_keys
from vitlab.layouts.hf import config_arguments, transformer_block_rules
from vitlab.layouts.pvt import convert_official_v2
from vitlab.segmentation.segformer import MixVisionTransformer, SegFormer

_HF_ENCODER = ("segformer.encoder.", "segformer.stages.", "encoder.patch_embeddings.", "stages.0.patch_embeddings.")


def _is_official(state_dict: StateDict) -> bool:
    return any(k.startswith(("backbone.patch_embed1.", "backbone.block1.")) for k in state_dict)


@register_converter(SegFormer, "official", _is_official)
def convert_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    """NVlabs/SegFormer's EncoderDecoder checkpoints (`backbone.*`, `decode_head.*`)."""
    encoder = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in convert_official_v2(encoder, model.backbone).items()}
    out.update(
        (k, v) for k, v in state_dict.items() if not k.startswith(("backbone.", "decode_head.conv_seg."))
    )  # fmt: skip
    return out


def _hf_encoder_rules(to: str) -> list[tuple[str, str]]:
    """HF Segformer encoder names, file or in-memory, optionally under `segformer.`, to PVT v2's under `to`."""
    stage = r"^(?:segformer\.)?(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\."
    block = r"^(?:segformer\.)?(?:encoder\.block\.(\d+)|stages\.(\d+)\.blocks)\.(\d+)\."
    into = rf"{to}stages.\1\2.blocks.\3."
    return [
        (stage.replace(r"(\d+)", "0") + r"proj\.", f"{to}patch_embed.proj."),
        (stage.replace(r"(\d+)", "0") + r"layer_norm\.", f"{to}patch_embed.norm."),
        (stage + r"proj\.", rf"{to}stages.\1\2.downsample.proj."),
        (stage + r"layer_norm\.", rf"{to}stages.\1\2.downsample.norm."),
        (block + r"layer_norm_1\.", into + "norm1."),
        (block + r"layer_norm_2\.", into + "norm2."),
        (block + r"attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", into + "attn.sr."),
        (block + r"attention\.(?:self|sequence_reduction)\.layer_norm\.", into + "attn.norm."),
        (block + r"mlp\.dense1\.", into + "mlp.fc1."),
        (block + r"mlp\.dense2\.", into + "mlp.fc2."),
        (block + r"mlp\.dwconv\.dwconv\.", into + "mlp.dwconv."),
        *transformer_block_rules(block, into, attention="self"),
        (r"^(?:segformer\.)?(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.", rf"{to}stages.\1\2.norm."),
    ]


def _is_hf(state_dict: StateDict) -> bool:
    return any(k.startswith(_HF_ENCODER) for k in state_dict)


@register_converter(SegFormer, "hf", _is_hf)
def convert_hf(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' `SegformerForSemanticSegmentation` (file or in-memory names)."""
    rules = [
        *_hf_encoder_rules("backbone."),
        (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
        (r"^decode_head\.linear_fuse\.weight$", "decode_head.linear_fuse.conv.weight"),
        (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
        (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
    ]
    return fuse_qkv(rename_keys(state_dict, rules), ("k", "v"), "kv")


@register_converter(MixVisionTransformer, "hf", _is_hf)
def convert_hf_encoder(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' `SegformerForImageClassification` / `SegformerModel` into a MiT."""
    rules = [*_hf_encoder_rules(""), (r"^classifier\.", "head.")]
    return fuse_qkv(rename_keys(state_dict, rules), ("k", "v"), "kv")


def _encoder_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """MiT constructor arguments of an HF `SegformerConfig` (sizes, ratios, dropouts, eps 1e-5)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"the HF config uses hidden_act={config['hidden_act']!r}; MiT uses the exact GELU")
    embeddings = (tuple(config.get("patch_sizes", (7, 3, 3, 3))), tuple(config.get("strides", (4, 2, 2, 2))))
    if embeddings != ((7, 3, 3, 3), (4, 2, 2, 2)):
        raise CheckpointError(
            f"the HF config has patch_sizes {embeddings[0]} and strides {embeddings[1]}; vitlab's MiT has the "
            "published overlapping embeddings (7x7 stride 4, then 3x3 stride 2)"
        )
    fields = dict(hidden_sizes="embed_dims", depths="depths", num_attention_heads="num_heads")
    fields.update(sr_ratios="sr_ratios", mlp_ratios="mlp_ratios", drop_path_rate="drop_path_rate")
    fields.update(hidden_dropout_prob="proj_drop_rate", attention_probs_dropout_prob="attn_drop_rate")
    out = config_arguments(config, fields)
    for key in ("patch_size", "img_size"):
        out.pop(key, None)
    for key in ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratios"):
        if key in out:
            out[key] = tuple(out[key])
    out.update(norm_eps=1e-5, embed_norm_eps=1e-5)  # transformers ignores layer_norm_eps (see the docstring)
    return out


@register_config_reader(MixVisionTransformer)
def read_hf_encoder_config(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `SegformerConfig` for `SegformerForImageClassification`."""
    return _encoder_arguments(config)


@register_config_reader(SegFormer)
def read_hf_config(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `SegformerConfig` for `SegformerForSemanticSegmentation`."""
    encoder = _encoder_arguments(config)
    out: dict[str, Any] = {
        key: encoder.pop(key) for key in ("in_chans", "num_classes", "drop_path_rate") if key in encoder
    }
    out["backbone_args"] = encoder
    if "decoder_hidden_size" in config:
        out["decoder_dim"] = config["decoder_hidden_size"]
    if "classifier_dropout_prob" in config:
        out["dropout"] = config["classifier_dropout_prob"]
    return out
