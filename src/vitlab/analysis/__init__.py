"""Tools to study models: complexity, attention maps, rollout, attention distance."""

from vitlab.analysis.complexity import count_macs, count_params, model_info

__all__ = ["count_macs", "count_params", "model_info"]
