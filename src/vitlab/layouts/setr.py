"""SETR checkpoint layouts: the official release (fudan-zvg/SETR) and mmsegmentation 1.x's PUP.

Official: the Naive and PUP checkpoints already have vitlab's names (`backbone.*` without a final
norm, `decode_head.*`, `auxiliary_head.N.*`). The MLA checkpoints keep the neck in the encoder,
`backbone.norm_{0..3}` and `backbone.mla.*`; vitlab's SETR holds it as `neck`, so any backbone can
feed it.

mmsegmentation 1.x re-implements SETR in its own layout. Its PUP decoder and PUP auxiliary heads
compute what the official ones compute (its 2x upsampling before the 1x1 classifier instead of
after commutes with it), so their checkpoints convert: the ViT's mmcv names (`layers.i.ln1`,
`attn.attn.in_proj_weight`, `ffn.layers.0.0`, `patch_embed.projection`), `up_convs.i.0.conv/bn`
-> `conv_i` / `syncbn_fc_i`, its classifier `conv_seg` -> `conv_{num_convs}`. Its convolutions
before a norm and its patch embedding have no bias (zeros here), and it has no counterpart of the
official, never-used 512-channel `conv_seg` (zeros). mmseg's Naive (4x in the head, then 4x) and
MLA (other upsampling and classifier) compute something else and are not converted.
"""

from __future__ import annotations

import torch
from torch import nn

from vitlab.layouts import StateDict, register_converter, rename_keys
from vitlab.segmentation.setr import SETR


def _is_official_mla(state_dict: StateDict) -> bool:
    return any(k.startswith("backbone.mla.") for k in state_dict)


@register_converter(SETR, "official", _is_official_mla)
def convert_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    return rename_keys(state_dict, [(r"^backbone\.(norm_\d+|mla)\.", r"neck.\1.")])


def _is_mmseg(state_dict: StateDict) -> bool:
    return any(k.startswith("backbone.layers.") for k in state_dict)


_MMSEG_VIT = [
    (r"^backbone\.patch_embed\.projection\.", "backbone.patch_embed.proj."),
    (r"^backbone\.layers\.(\d+)\.ln1\.", r"backbone.blocks.\1.norm1."),
    (r"^backbone\.layers\.(\d+)\.ln2\.", r"backbone.blocks.\1.norm2."),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.in_proj_", r"backbone.blocks.\1.attn.qkv."),
    (r"^backbone\.layers\.(\d+)\.attn\.attn\.out_proj\.", r"backbone.blocks.\1.attn.proj."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"backbone.blocks.\1.mlp.fc1."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\.", r"backbone.blocks.\1.mlp.fc2."),
]


@register_converter(SETR, "mmseg", _is_mmseg)
def convert_mmseg(state_dict: StateDict, model: nn.Module) -> StateDict:
    if model.decoder != "pup":
        raise ValueError(f"an mmsegmentation SETR checkpoint converts into the PUP decoder, not {model.decoder!r}")
    heads = {"decode_head": model.decode_head}
    heads.update({f"auxiliary_head.{i}": head for i, head in enumerate(model.auxiliary_head or [])})
    rules = list(_MMSEG_VIT)
    for prefix, head in heads.items():
        p = prefix.replace(".", r"\.")
        rules += [
            (rf"^{p}\.up_convs\.(\d+)\.0\.conv\.", rf"{prefix}.conv_\1."),
            (rf"^{p}\.up_convs\.(\d+)\.0\.bn\.", rf"{prefix}.syncbn_fc_\1."),
            (rf"^{p}\.conv_seg\.", f"{prefix}.conv_{head.num_convs}."),
        ]
    converted = rename_keys(state_dict, rules)
    for key, value in model.state_dict().items():  # biases mmseg leaves out, the official unused conv_seg
        bias_of_a_weight = key.endswith(".bias") and key.removesuffix("bias") + "weight" in converted
        if key not in converted and (bias_of_a_weight or ".conv_seg." in key):
            converted[key] = torch.zeros(value.shape, dtype=value.dtype)
    return converted
