"""Tools to study models: complexity, attention maps."""

from vitlab.analysis.attention import attention_rollout, class_token_attention
from vitlab.analysis.complexity import count_macs, count_params, model_info

__all__ = ["attention_rollout", "class_token_attention", "count_macs", "count_params", "model_info"]
