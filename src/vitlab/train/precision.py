"""Mixed precision: which one, and whether the hardware runs it natively.

bfloat16 autocast halves memory traffic where the hardware computes in bf16 (recent GPUs; CPUs with
AVX512-BF16 or AMX), and is several times *slower* than float32 where it does not (AVX2-only CPUs,
common in laptops and cloud VMs: ViT-S trains at about 1.7 img/s in bf16 against 10.9 in float32 on
one). So `--amp auto`, the default, picks bf16 only where it is native, and forcing bf16 elsewhere
warns. float16 (`--amp fp16`) trains with a dynamic loss scaler, on the GPU and on the CPU (torch's CPU
autocast and GradScaler support it; native only on CPUs with AVX512-FP16 or AMX-FP16, and it warns
elsewhere): a NaN or infinite loss stops the run as in float32 (vitlab.train.loop), while the scaler
skips the steps whose gradients overflow.
"""

from __future__ import annotations

import platform
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from vitlab.train.config import ConfigError

AMP_CHOICES = ("auto", "none", "bf16", "fp16")


def cpu_flags() -> set[str]:
    """The feature flags of this CPU (Linux; empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return set()
    flags = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86: avx512_bf16 or amx_bf16; Arm: bf16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_fp16() -> bool:
    """Whether this CPU computes float16 natively (x86: avx512_fp16 or amx_fp16; Arm: fphp)."""
    return bool(cpu_flags() & {"avx512_fp16", "amx_fp16", "fphp"})


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision a run uses: "none", "bf16" or "fp16" (`amp="auto"` chooses bf16 where it is native)."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    if amp == "fp16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--amp fp16 runs on a GPU or the CPU, not on {device.type}; use --amp bf16 or none")
    if amp == "fp16" and device.type == "cpu" and not cpu_has_native_fp16():
        warnings.warn(
            "--amp fp16 on a CPU without native float16 arithmetic (no avx512_fp16 / amx_fp16): it runs much "
            "slower than float32 here, and float16 overflows where bfloat16 does not; prefer --amp bf16 or none",
            stacklevel=2,
        )
    if amp == "bf16" and not native_bf16(device):
        warnings.warn(
            f"--amp bf16 on a {device.type} without native bfloat16 arithmetic (no avx512_bf16 / amx_bf16): it "
            f"runs several times slower than float32 here; --amp auto picks float32 on this machine",
            stacklevel=2,
        )
    return amp


def loss_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """float16 training's dynamic loss scaler (on the GPU and on the CPU); none otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def autocast(amp: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of a resolved precision ("none": no autocast)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
