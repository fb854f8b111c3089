"""Checks on a checkpoint before it loads: what its pickle refers to (read without unpickling), and its
tensors' values (NaN, infinity) and kinds (dtype).

`vitlab.checkpoint` raises what these find as CheckpointError; they live apart to keep that module
about reading and converting files.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

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


def pickled_globals(path: Path) -> list[str]:
    """The classes and functions a torch file's pickle refers to, besides torch's own, read without unpickling."""
    names: set[str] = set()
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):  # the pickle is the archive's data.pkl (scanned here: any protocol)
            try:
                with zipfile.ZipFile(f) as archive:
                    member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                    if member is not None:
                        names = _globals_of_one_pickle(io.BytesIO(archive.read(member)))
            except (ValueError, EOFError, zipfile.BadZipFile, OSError):
                pass
        else:
            f.seek(0)  # is_zipfile read the end of the file
            try:
                for _ in range(4):  # legacy format: magic number, protocol, system info, then the object
                    names |= _globals_of_one_pickle(f)
            except (ValueError, EOFError):
                pass
    names = {n.replace("__builtin__.", "builtins.", 1) for n in names}  # protocol 2 writes Python 2's name
    return sorted(n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict")


def _globals_of_one_pickle(f: Any) -> set[str]:
    """GLOBAL names, and STACK_GLOBAL ones from the two strings pushed (or fetched from the memo) before it."""
    names: set[str] = set()
    pushed: list[str | None] = []  # what each opcode left on top of the stack, as far as strings go
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(f):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            names.add(arg.replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
            names.add(f"{pushed[-2]}.{pushed[-1]}")
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            continue
        elif name == "STOP":
            break
        if name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        else:
            pushed.append(arg if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name) else None)
    return names
