"""Checks on the tensors of a checkpoint before they load: values (NaN, infinity) and kinds (dtype).

`vitlab.checkpoint` raises what these find as CheckpointError; they live apart to keep that module
about reading and converting files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor


def describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


_NONFINITE_ALLOWED: ContextVar[bool] = ContextVar("vitlab_allow_nonfinite", default=False)


def nonfinite_allowed() -> bool:
    """Whether the code runs inside an `allow_nonfinite()` block."""
    return _NONFINITE_ALLOWED.get()


@contextmanager
def allow_nonfinite(allow: bool = True) -> Iterator[None]:
    """Within this block, checkpoints with NaN or infinite weights load (`--allow-nonfinite`); by default
    they are refused, since such weights give NaN outputs far from the file that caused them."""
    token = _NONFINITE_ALLOWED.set(allow)
    try:
        yield
    finally:
        _NONFINITE_ALLOWED.reset(token)


def check_finite(state_dict: dict[str, Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinite values, naming the keys and how many values are bad."""
    bad = []
    for key, value in state_dict.items():
        if (value.is_floating_point() or value.is_complex()) and value.device.type != "meta":
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{key} ({count} of {value.numel()} values)")
    if bad:
        from vitlab.checkpoint import CheckpointError

        raise CheckpointError(
            f"{source} holds NaN or infinite weights in {len(bad)} tensors: {describe(bad)}; the run that wrote "
            f"it diverged or the file is damaged. Pass allow_nonfinite=True (--allow-nonfinite) to load it anyway"
        )


def castable(value: Tensor, target: Tensor) -> bool:
    """Whether loading `value` into `target` keeps its meaning: floats of any precision into floats
    (a half-precision checkpoint loads), integers into integers; not integers or booleans into weights."""
    if target.is_floating_point():
        return value.is_floating_point()
    if target.dtype == torch.bool:
        return value.dtype == torch.bool
    return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
