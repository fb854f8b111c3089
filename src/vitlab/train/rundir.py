"""The files of a training run, in one place.

checkpoint-last.pt   everything to resume (written atomically after every epoch, and every
                     `--checkpoint-every` steps)
config.yaml          the resolved options; `vitlab train --config` reruns them
metrics.csv          one row per epoch
model.safetensors    the final weights, with the model's name, arguments and class names
summary.json         what was measured, once, at the end
curves.png           loss and accuracy by epoch
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from torch import Tensor

from vitlab.train.checkpoint import (
    atomic_torch_save,
    atomic_write_bytes,
    load_training_checkpoint,
    remove_stale_temporaries,
)


class RunDir:
    """A run directory; the only code that knows its file names."""

    CHECKPOINT = "checkpoint-last.pt"
    CONFIG = "config.yaml"
    METRICS = "metrics.csv"
    WEIGHTS = "model.safetensors"
    SUMMARY = "summary.json"
    CURVES = "curves.png"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def remove_stale_temporaries(self) -> list[Path]:
        """The half-written files of a process killed while writing, removed (they never replace a file)."""
        return [tmp for name in (self.CHECKPOINT, self.WEIGHTS) for tmp in remove_stale_temporaries(self.path / name)]

    def read_checkpoint(self) -> dict[str, Any]:
        return load_training_checkpoint(self.checkpoint)

    def write_checkpoint(self, payload: dict[str, Any]) -> None:
        atomic_torch_save(payload, self.checkpoint)

    def read_config(self) -> dict[str, Any]:
        """The options the run was started with (config.yaml, written when it started)."""
        from vitlab.train.config import load_yaml

        return load_yaml(self.path / self.CONFIG)

    def write_config(self, config: Any) -> None:
        from vitlab.train.config import save_yaml

        save_yaml(config, self.path / self.CONFIG)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_bytes(self.path / self.METRICS, buffer.getvalue().encode())

    def write_weights(
        self, state_dict: dict[str, Tensor], class_names: list[str], model: str, model_args: dict[str, Any]
    ) -> None:
        """model.safetensors with what rebuilds the model (`vitlab.load_model`) and the class names."""
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        metadata = {
            "class_names": json.dumps(class_names),
            "vitlab_model": model,
            "vitlab_model_args": json.dumps(model_args, default=str),
        }
        atomic_write_bytes(self.weights, save(tensors, metadata=metadata))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / self.SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def write_curves(self, history: list[dict[str, Any]]) -> None:
        from vitlab.train.plots import plot_curves

        plot_curves(history, self.path / self.CURVES)

    def __str__(self) -> str:
        return str(self.path)
