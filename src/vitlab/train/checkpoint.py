"""Training checkpoints: atomic writes and random-number states.

Everything saved here loads with `torch.load(weights_only=True)`: tensors, numbers, strings,
lists and dicts only. Random states become tensors.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None


class RunWriteError(RuntimeError):
    """A file of a run could not be written (a full disk, a quota, a read-only file system); the
    previous version of the file is intact, and the message says so."""


def temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, and the
    temporary file is renamed over `path` (atomic on POSIX); the directory is fsynced so the
    rename itself survives a power cut. A failed write (ENOSPC, EDQUOT, EROFS, ...) removes the
    temporary file and raises RunWriteError naming the file and the reason.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as err:
        raise _write_error(path, len(data), err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, len(data), err) from err
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _write_error(path: Path, size: int, err: OSError) -> RunWriteError:
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    reason = err.strerror or str(err)
    return RunWriteError(
        f"could not write {path} ({size / 2**20:.1f} MiB): {reason}; {kept}. {_remedy(err, size)} and rerun the "
        "same command with --resume to continue from the last checkpoint"
    )


def _remedy(err: OSError, size: int) -> str:
    """What to change for the write to succeed, by the reason it failed."""
    if err.errno == errno.EFBIG:  # the process's file-size limit (ulimit -f) or the file system's largest file
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else None
        if limit is not None and limit != resource.RLIM_INFINITY and limit < size:
            return f"This process may write files of at most {limit:,} bytes (ulimit -f): raise that limit"
        return "The file system or a limit on this process refuses files this large: write to another place"
    if err.errno == errno.EDQUOT:
        return "Raise the quota (or free space under it)"
    if err.errno == errno.EROFS:
        return "Make the file system writable (or write to another --output)"
    return "Free space (or fix the file system)"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files a process killed while writing `path` left behind; returns them."""
    stale = sorted(path.parent.glob(f"{temporary_prefix(path)}*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    from vitlab.checkpoint import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to unpickle means the file is unusable
        raise CheckpointError(f"cannot resume from {path}: {err}") from err


# Random states as tensors.
def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor(list(internal), dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss if gauss is not None else "none",
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    gauss = None if state["python_gauss"] == "none" else state["python_gauss"]
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), gauss))
    np.random.set_state(
        (
            "MT19937",
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
