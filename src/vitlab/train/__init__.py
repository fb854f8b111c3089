"""Training and evaluation: `train(config)`, `evaluate(...)`, the recipe configuration, losses, schedules.

`run.py` sets a run up, `loop.py` trains it (no task inside), `tasks/` says what a batch costs and how
a model scores, `state.py` is everything a checkpoint holds, `rundir.py` the files of a run.
"""

from vitlab.train.config import ConfigError, TrainConfig, make_config
from vitlab.train.evaluate import evaluate
from vitlab.train.loop import TrainingDiverged
from vitlab.train.run import train

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "evaluate", "make_config", "train"]
