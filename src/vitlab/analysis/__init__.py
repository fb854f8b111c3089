"""Tools to study models: attention maps in every family's geometry, rollout, statistics, complexity."""

from vitlab.analysis import families  # noqa: F401  (registers the families' geometries)
from vitlab.analysis.attention import attention_rollout, class_token_attention
from vitlab.analysis.complexity import count_macs, count_params, model_info
from vitlab.analysis.geometry import LayerAttention, LayerCall, Tokens, register_geometry
from vitlab.analysis.maps import NoAttentionError, query_weights, record_layers

__all__ = [
    "LayerAttention",
    "LayerCall",
    "NoAttentionError",
    "Tokens",
    "attention_rollout",
    "class_token_attention",
    "count_macs",
    "count_params",
    "model_info",
    "query_weights",
    "record_layers",
    "register_geometry",
]
