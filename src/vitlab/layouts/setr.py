"""SETR's official release (fudan-zvg/SETR): the MLA neck inside `backbone`.

The Naive and PUP checkpoints already have vitlab's names (`backbone.*` without a final norm,
`decode_head.*`, `auxiliary_head.N.*`). The MLA checkpoints keep the neck in the encoder,
`backbone.norm_{0..3}` and `backbone.mla.*`; vitlab's SETR holds it as `neck`, so any backbone
can feed it.
"""

from __future__ import annotations

from torch import nn

from vitlab.layouts import StateDict, register_converter, rename_keys
from vitlab.segmentation.setr import SETR


def _is_official_mla(state_dict: StateDict) -> bool:
    return any(k.startswith("backbone.mla.") for k in state_dict)


@register_converter(SETR, "official", _is_official_mla)
def convert_official(state_dict: StateDict, model: nn.Module) -> StateDict:
    return rename_keys(state_dict, [(r"^backbone\.(norm_\d+|mla)\.", r"neck.\1.")])
