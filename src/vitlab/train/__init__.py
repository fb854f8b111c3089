"""Training and evaluation: `train(config)`, `evaluate(...)`, the recipe configuration, losses, schedules."""

from vitlab.train.config import ConfigError, TrainConfig, make_config
from vitlab.train.engine import TrainingDiverged, evaluate, train

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "evaluate", "make_config", "train"]
