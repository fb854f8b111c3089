"""Multi-process training: `torchrun --nproc_per_node=N -m vitlab train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; each process then trains a DistributedDataParallel
replica (NCCL on GPUs, gloo on CPU) on its share of every global batch, and metrics are summed
across processes. Without those variables everything runs in one process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`--device` as a torch device: auto (a GPU if there is one), cpu, cuda, cuda:N."""
    from vitlab.train.config import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: vitlab trains on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} was asked for, but this machine has no GPU PyTorch can use")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `values` over all processes (float64 on CPU for gloo, so integer counts stay exact)."""
    if not info.distributed:
        return values
    reduced = values.to(info.device if info.device.type == "cuda" else "cpu", torch.float64).clone()
    dist.all_reduce(reduced)
    return reduced


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which DDP does not keep equal."""
    if not info.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


class PeerLostError(RuntimeError):
    """A process of a multi-process run lost the others (one died, or the network failed)."""


@contextmanager
def peers_watched(info: DistInfo, where: object) -> Iterator[None]:
    """Turn a collective that fails because another process died (gloo: the connection closed; NCCL:
    a DistBackendError) into one PeerLostError that says what to do, instead of a traceback.

    torchrun stops the other processes with SIGTERM when one fails, often before their collective
    has failed: during a multi-process run SIGTERM raises the same error (the checkpoint on disk is
    whole, as every write is atomic; a half-written temporary is removed on --resume)."""
    resubmit = f"the last checkpoint in {where} stands: resubmit the same command with --resume"

    def stopped(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one message; torchrun's SIGKILL follows if need be
        raise PeerLostError(
            f"process {info.rank} of {info.world_size} was stopped by SIGTERM (torchrun sends it when another "
            f"process of the run fails); {resubmit}"
        )

    watch_signal = info.distributed and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopped) if watch_signal else None
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        lost = isinstance(err, getattr(dist, "DistBackendError", ())) or any(
            s in text for s in ("Connection closed", "Connection reset", "Broken pipe", "gloo", "NCCL")
        )
        if not info.distributed or not lost or isinstance(err, PeerLostError):
            raise
        raise PeerLostError(
            f"process {info.rank} of {info.world_size} lost the other processes of the run "
            f"({text.splitlines()[0][:200]}); {resubmit}"
        ) from err
    finally:
        if watch_signal:
            signal.signal(signal.SIGTERM, previous)
