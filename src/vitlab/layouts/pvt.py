"""PVT checkpoints: the official v2 release (whai362/PVT) and HF transformers' `Pvt*` and `PvtV2*`.

PVT v1 keeps the official layout (no converter needed for the release); PVT v2 keeps timm's, into
which the official v2 files are renamed as timm's `checkpoint_filter_fn` renames them
(`patch_embed{i}` -> `patch_embed` / `stages.{i-1}.downsample`, `block{i}.{j}` ->
`stages.{i-1}.blocks.{j}`, `norm{i}` -> `stages.{i-1}.norm`, `dwconv.dwconv` -> `dwconv`). HF
keeps separate key and value projections, stacked here into the references' `kv` ([k; v]).
HF writes the same names in files as in memory for both PVT versions (transformers 5.x).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.layouts import StateDict, fuse_qkv, register_config_reader, register_converter, rename_keys
from vitlab.layouts.hf import config_arguments
from vitlab.models.pvt import PyramidVisionTransformer, PyramidVisionTransformerV2


def _is_official_v2(state_dict: StateDict) -> bool:
    return any(k.startswith(("patch_embed1.", "block1.")) for k in state_dict)


@register_converter(PyramidVisionTransformerV2, "official", _is_official_v2)
def convert_official_v2(state_dict: StateDict, model: nn.Module) -> StateDict:
    """whai362/PVT v2 branch, classification/pvt_v2.py: numbered stages, `mlp.dwconv.dwconv`."""
    rules = [
        (r"^patch_embed1\.", "patch_embed."),
        (r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
        (
            r"^block(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.",
            lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.mlp.dwconv.",
        ),
        (r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
        (r"^norm(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    ]
    return rename_keys(state_dict, rules)


def _block_rules(block: str, to: str, attention: str) -> list[tuple[str, str]]:
    """HF's PVT layer names (`block` regex, groups kept in `to`); `attention` is the path of q/k/v."""
    return [
        (block + r"layer_norm_1\.", to + "norm1."),
        (block + r"layer_norm_2\.", to + "norm2."),
        (block + attention + r"query\.", to + "attn.q."),
        (block + attention + r"key\.", to + "attn.k."),
        (block + attention + r"value\.", to + "attn.v."),
        (block + attention + r"(?:sequence_reduction|spatial_reduction)\.", to + "attn.sr."),
        (block + attention + r"layer_norm\.", to + "attn.norm."),
        (block + r"attention\.(?:output\.dense|proj)\.", to + "attn.proj."),
        (block + r"mlp\.dense1\.", to + "mlp.fc1."),
        (block + r"mlp\.dwconv\.dwconv\.", to + "mlp.dwconv."),
        (block + r"mlp\.dense2\.", to + "mlp.fc2."),
    ]


def _is_hf_v1(state_dict: StateDict) -> bool:
    return any(k.startswith(("pvt.encoder.", "encoder.patch_embeddings.")) for k in state_dict)


@register_converter(PyramidVisionTransformer, "hf", _is_hf_v1)
def convert_hf_v1(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' `PvtForImageClassification` / `PvtModel` into the official v1 layout.

    HF numbers stages from 0, the official code from 1: the names are made 0-based first, then shifted.
    """
    embed = r"^(?:pvt\.)?encoder\.patch_embeddings\.(\d+)\."
    rules = [
        (embed + r"cls_token$", "cls_token"),
        (embed + r"position_embeddings$", r"pos_embed\1"),
        (embed + r"projection\.", r"patch_embed\1.proj."),
        (embed + r"layer_norm\.", r"patch_embed\1.norm."),
        *_block_rules(r"^(?:pvt\.)?encoder\.block\.(\d+)\.(\d+)\.", r"block\1.\2.", r"attention\.self\."),
        (r"^(?:pvt\.)?encoder\.layer_norm\.", "norm."),
        (r"^classifier\.", "head."),
    ]
    zero_based = rename_keys(state_dict, rules)
    one_based = rename_keys(zero_based, [(r"^(block|patch_embed|pos_embed)(\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}")])
    return fuse_qkv(one_based, ("k", "v"), "kv")


def _is_hf_v2(state_dict: StateDict) -> bool:
    return any(k.startswith(("pvt_v2.encoder.", "encoder.layers.")) for k in state_dict)


@register_converter(PyramidVisionTransformerV2, "hf", _is_hf_v2)
def convert_hf_v2(state_dict: StateDict, model: nn.Module) -> StateDict:
    """HF transformers' `PvtV2ForImageClassification` / `PvtV2Model` into timm's layout."""
    layer = r"^(?:pvt_v2\.)?encoder\.layers\.(\d+)\."
    rules = [
        (layer.replace(r"(\d+)", "0") + r"patch_embedding\.proj\.", "patch_embed.proj."),
        (layer.replace(r"(\d+)", "0") + r"patch_embedding\.layer_norm\.", "patch_embed.norm."),
        (layer + r"patch_embedding\.proj\.", r"stages.\1.downsample.proj."),
        (layer + r"patch_embedding\.layer_norm\.", r"stages.\1.downsample.norm."),
        *_block_rules(layer + r"blocks\.(\d+)\.", r"stages.\1.blocks.\2.", r"attention\."),
        (layer + r"layer_norm\.", r"stages.\1.norm."),
        (r"^classifier\.", "head."),
    ]
    return fuse_qkv(rename_keys(state_dict, rules), ("k", "v"), "kv")


def _hf_arguments(config: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """What HF's PVT configs share: sizes per stage, and one `layer_norm_eps` for every LayerNorm."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"the HF config uses hidden_act={config['hidden_act']!r}; PVT uses the exact GELU")
    fields = dict(fields, hidden_sizes="embed_dims", depths="depths", num_attention_heads="num_heads")
    out = config_arguments(config, dict(fields, mlp_ratios="mlp_ratios"))
    out.pop("patch_size", None)
    if "norm_eps" in out:
        out["embed_norm_eps"] = out["norm_eps"]
    for key in ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratios"):
        if key in out:
            out[key] = tuple(out[key])
    if isinstance(out.get("img_size"), list):
        out["img_size"] = tuple(out["img_size"])
    return out


@register_config_reader(PyramidVisionTransformer)
def read_hf_config_v1(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `PvtConfig` (sizes, reduction ratios, eps, classes)."""
    out = _hf_arguments(config, dict(sequence_reduction_ratios="sr_ratios"))
    if "patch_sizes" in config:
        out["patch_size"] = config["patch_sizes"][0]
    return out


@register_config_reader(PyramidVisionTransformerV2)
def read_hf_config_v2(config: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of an HF `PvtV2Config` (sizes, reduction ratios, linear SRA, eps, classes)."""
    embeddings = (tuple(config.get("patch_sizes", (7, 3, 3, 3))), tuple(config.get("strides", (4, 2, 2, 2))))
    if embeddings != ((7, 3, 3, 3), (4, 2, 2, 2)):
        raise CheckpointError(
            f"the HF config has patch_sizes {embeddings[0]} and strides {embeddings[1]}; vitlab's PVT v2 has the "
            "published overlapping embeddings (7x7 stride 4, then 3x3 stride 2)"
        )
    return _hf_arguments(config, dict(sr_ratios="sr_ratios", linear_attention="linear"))
