"""Tools to study models: attention maps in every family's geometry, rollout, statistics, complexity."""

from vitlab.analysis import families  # noqa: F401  (registers the families' geometries)
from vitlab.analysis.attention import attention_rollout, class_token_attention
from vitlab.analysis.class_masks import draw_class_masks, record_class_masks
from vitlab.analysis.complexity import count_macs, count_params, model_info
from vitlab.analysis.gates import draw_gates, record_gates
from vitlab.analysis.geometry import LayerAttention, LayerCall, Tokens, register_geometry
from vitlab.analysis.maps import NoAttentionError, query_weights, record_layers
from vitlab.analysis.sequences import draw_token_attention, token_cross_attention

__all__ = [
    "LayerAttention",
    "LayerCall",
    "NoAttentionError",
    "Tokens",
    "attention_rollout",
    "class_token_attention",
    "count_macs",
    "count_params",
    "draw_class_masks",
    "draw_gates",
    "draw_token_attention",
    "model_info",
    "query_weights",
    "record_class_masks",
    "record_gates",
    "record_layers",
    "register_geometry",
    "token_cross_attention",
]
