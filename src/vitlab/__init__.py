"""vitlab: vision transformers built from one shared set of attention blocks."""

from vitlab.analysis.complexity import count_macs, count_params, model_info
from vitlab.checkpoint import CheckpointError, inspect_checkpoint, load_checkpoint
from vitlab.fold import fold_for_inference
from vitlab.layers.attention import capture_attention
from vitlab.registry import create_model, list_models, load_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "capture_attention",
    "count_macs",
    "count_params",
    "create_model",
    "fold_for_inference",
    "inspect_checkpoint",
    "list_models",
    "load_checkpoint",
    "load_model",
    "model_info",
]
