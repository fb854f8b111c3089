"""Segmenter's official release (rstrudel/segmenter): `encoder.*` and `decoder.*`.

The release's encoder has timm's ViT names and its decoders the names vitlab keeps, so the
conversion is the two prefixes: `encoder.` -> `backbone.`, `decoder.` -> `decode_head.`.
"""

from __future__ import annotations

from torch import nn

from vitlab.layouts import StateDict, register_converter, rename_keys
from vitlab.segmentation.segmenter import Segmenter


def _is_official(state_dict: StateDict) -> bool:
    return any(k.startswith("encoder.") for k in state_dict) and any(k.startswith("decoder.") for k in state_dict)


@register_converter(Segmenter, "official", _is_official)
def convert_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    return rename_keys(state_dict, [(r"^encoder\.", "backbone."), (r"^decoder\.", "decode_head.")])
