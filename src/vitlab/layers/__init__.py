"""The building blocks every vitlab model shares."""

from vitlab.layers.attention import (
    AttentionLayer,
    MultiHeadAttention,
    attend,
    attention_logits,
    capture_attention,
    explicit_attention,
    record_attention,
)
from vitlab.layers.drop import DropPath, LayerScale, drop_path, drop_path_rates
from vitlab.layers.embed import PatchEmbed, to_2tuple
from vitlab.layers.grouping import pad_to_multiple
from vitlab.layers.mlp import Mlp
from vitlab.layers.position import resize_pos_embed, sinusoidal_1d, sinusoidal_2d

__all__ = [
    "AttentionLayer",
    "DropPath",
    "LayerScale",
    "Mlp",
    "MultiHeadAttention",
    "PatchEmbed",
    "attend",
    "attention_logits",
    "capture_attention",
    "drop_path",
    "drop_path_rates",
    "explicit_attention",
    "pad_to_multiple",
    "record_attention",
    "resize_pos_embed",
    "sinusoidal_1d",
    "sinusoidal_2d",
    "to_2tuple",
]
