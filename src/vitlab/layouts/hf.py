"""HF transformers' names, written once for every family that HF hosts.

transformers 5.x keeps new names in memory (`layers.0.attention.q_proj`) but reads and writes the
hub's legacy names in files (`encoder.layer.0.attention.attention.query`); checkpoints from the
hub and from `save_pretrained` use the file names. Both are accepted.
"""

from __future__ import annotations

from typing import Any


def transformer_block_rules(block: str, to: str, attention: str = "attention") -> list[tuple[str, str]]:
    """Rename rules for one HF transformer layer, matched by the regex `block`, to vitlab's `to` prefix.

    `attention` is the HF name of the self-attention's container in the file layout ("attention"
    for ViT/DeiT, whose file names are `attention.attention.query`; "self" for Swin's
    `attention.self.query`). The separate q, k, v projections come out as `attn.q`, `attn.k`,
    `attn.v` (fuse them with `fuse_qkv`).
    """
    return [
        (block + r"layernorm_before\.", to + "norm1."),
        (block + r"layernorm_after\.", to + "norm2."),
        (block + rf"attention\.(?:{attention}\.query|q_proj)\.", to + "attn.q."),
        (block + rf"attention\.(?:{attention}\.key|k_proj)\.", to + "attn.k."),
        (block + rf"attention\.(?:{attention}\.value|v_proj)\.", to + "attn.v."),
        (block + r"attention\.(?:output\.dense|o_proj)\.", to + "attn.proj."),
        (block + r"(?:intermediate\.dense|mlp\.fc1)\.", to + "mlp.fc1."),
        (block + r"(?:output\.dense|mlp\.fc2)\.", to + "mlp.fc2."),
    ]


# HF config fields that mean the same in every vision family, and vitlab's constructor arguments for them.
COMMON_FIELDS = dict(
    layer_norm_eps="norm_eps",
    image_size="img_size",
    patch_size="patch_size",
    num_channels="in_chans",
    qkv_bias="qkv_bias",
)


def config_arguments(config: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    """vitlab constructor arguments from an HF config: `fields` (HF name -> vitlab name) beyond the common
    ones, and `num_classes` from its labels."""
    names = {**COMMON_FIELDS, **fields}
    out = {ours: config[theirs] for theirs, ours in names.items() if theirs in config}
    classes = class_count(config)
    if classes is not None:
        out["num_classes"] = classes
    return out


def class_count(config: dict[str, Any]) -> int | None:
    """The number of labels an HF config declares (`id2label`, else `num_labels`), if any."""
    id2label = config.get("id2label")
    if id2label:
        return len(id2label)
    return config.get("num_labels")


def class_names(config: dict[str, Any]) -> list[str] | None:
    """The label names of an HF config in class-index order, if it has any."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=int)]
