"""`torch.nn.Transformer`'s state dicts, loaded into vitlab's encoder-decoder.

nn.Transformer (and any model that holds one, e.g. as `transformer`, like PyTorch's translation
tutorial) names its layers `encoder.layers.i` / `decoder.layers.i` with `self_attn` and, in the
decoder, `multihead_attn`, each an `nn.MultiheadAttention` with one fused `in_proj_weight`
(queries, keys, values stacked) and `out_proj`; the feed-forward network is `linear1` / `linear2`.
vitlab splits the fused projection into `q` and `kv` (cross-attention computes them from different
sequences), names the encoder-decoder attention `cross_attn` and the network `mlp.fc1` / `mlp.fc2`.
The norms (`norm1..3`, the stacks' `norm`) keep their names.
"""

from __future__ import annotations

import re

from torch import nn

from vitlab.layouts import StateDict, register_converter
from vitlab.seq2seq.layers import EncoderDecoder
from vitlab.seq2seq.transformer import TransformerSeq2Seq

_LAYER = r"^(.*?(?:encoder|decoder)\.layers\.\d+\.)"


def is_torch_transformer(state_dict: StateDict) -> bool:
    return any(re.match(_LAYER + r"self_attn\.in_proj_weight$", k) for k in state_dict)


def convert_torch_transformer(state_dict: StateDict, model: nn.Module) -> StateDict:
    """nn.Transformer names -> vitlab's; everything else (embeddings, a generator) is left as it is."""
    out: StateDict = {}
    for key, value in state_dict.items():
        match = re.match(
            _LAYER + r"(self_attn|multihead_attn)\.(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))$", key
        )
        if match:
            layer, attn, part = match.group(1), match.group(2), match.group(3)
            attn = "cross_attn" if attn == "multihead_attn" else "self_attn"
            if part.startswith("in_proj"):
                kind = part.removeprefix("in_proj_")
                dim = value.shape[0] // 3
                out[f"{layer}{attn}.q.{kind}"] = value[:dim]
                out[f"{layer}{attn}.kv.{kind}"] = value[dim:]
            else:
                out[f"{layer}{attn}.proj.{match.group(4)}"] = value
            continue
        key = re.sub(_LAYER + r"linear([12])\.", lambda m: f"{m.group(1)}mlp.fc{m.group(2)}.", key)
        out[key] = value
    return out


register_converter(EncoderDecoder, "torch", is_torch_transformer)(convert_torch_transformer)
register_converter(TransformerSeq2Seq, "torch", is_torch_transformer)(convert_torch_transformer)
