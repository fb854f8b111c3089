"""What a benchmark reports besides time: peak memory of one call, and the machine it ran on.

Peak memory on CPU is the growth of the resident set over one call: the kernel's high-water mark
(VmHWM) is reset through `/proc/self/clear_refs` after freed memory is handed back to the system
(`malloc_trim`), so what the call allocates and frees again is seen. On GPU it is torch's maximum
allocated over the call. Split from `vitlab.bench`, which re-exports both.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes one call of `fn()` adds at its peak: torch's max allocated on GPU, the resident set's growth on CPU.

    None where the resident set's high-water mark cannot be reset (outside Linux).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _release_free_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    base = _proc_status_kb("VmRSS")
    fn()
    peak = _proc_status_kb("VmHWM")
    return None if base is None or peak is None else max(0, peak - base) * 1024


def machine_description(device: torch.device) -> str:
    """The CPU (model, the vector extensions that decide matmul speed), threads, torch version, GPU."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd", "bf16")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (
        f"{name} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'}), {cores} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text
