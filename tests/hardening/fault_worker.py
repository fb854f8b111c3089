"""`vitlab` with a fault planted, run as a subprocess by tests/hardening/test_training_faults.py.

VITLAB_TEST_STALL_AT=N: the N-th write of checkpoint-last.pt stops after its bytes are in the
temporary file and before the rename (it touches VITLAB_TEST_STALL_MARKER, then sleeps), so that
the test can SIGKILL the process in the middle of a checkpoint write.
VITLAB_TEST_FSIZE_AT=N: before the N-th write of checkpoint-last.pt, the process's file-size limit
(RLIMIT_FSIZE, enforced by the kernel) is lowered to half the size of the checkpoint already written,
as if the run had been started under `ulimit -f`: the write fails with EFBIG (vitlab ignores SIGXFSZ).
VITLAB_TEST_KILL_RANK=R, VITLAB_TEST_KILL_STEP=S: under torchrun, process R kills itself with
SIGKILL when it starts optimiser step S (counted from the start of the process).
"""

import os
import signal
import sys
import time
from pathlib import Path


def stall_checkpoint_write(nth: int, marker: Path) -> None:
    real_fsync, writes = os.fsync, [0]

    def fsync(fd: int) -> None:
        real_fsync(fd)
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if ".checkpoint-last.pt." in name:
            writes[0] += 1
            if writes[0] == nth:
                marker.touch()
                time.sleep(600)

    os.fsync = fsync


def limit_file_size_at(nth: int) -> None:
    import resource
    import tempfile

    real_mkstemp, writes = tempfile.mkstemp, [0]

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == ".checkpoint-last.pt.":
            writes[0] += 1
            if writes[0] == nth:
                size = (Path(kwargs["dir"]) / "checkpoint-last.pt").stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return real_mkstemp(*args, **kwargs)

    tempfile.mkstemp = mkstemp


def kill_rank_at_step(rank: int, step: int) -> None:
    from vitlab.train import loop

    real_step, steps = loop.optimizer_step, [0]

    def optimizer_step(run, batches, lr):
        steps[0] += 1
        if run.info.rank == rank and steps[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(run, batches, lr)

    loop.optimizer_step = optimizer_step


if __name__ == "__main__":
    if "VITLAB_TEST_STALL_AT" in os.environ:
        stall_checkpoint_write(int(os.environ["VITLAB_TEST_STALL_AT"]), Path(os.environ["VITLAB_TEST_STALL_MARKER"]))
    if "VITLAB_TEST_FSIZE_AT" in os.environ:
        limit_file_size_at(int(os.environ["VITLAB_TEST_FSIZE_AT"]))
    if "VITLAB_TEST_KILL_RANK" in os.environ:
        kill_rank_at_step(int(os.environ["VITLAB_TEST_KILL_RANK"]), int(os.environ["VITLAB_TEST_KILL_STEP"]))
    from vitlab.cli import main

    sys.exit(main(sys.argv[1:]))
