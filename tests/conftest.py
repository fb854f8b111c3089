import os

import pytest
import torch

# tests/live compares full-size models against the live reference packages (timm, transformers),
# which the test environment does not install: `make test-live` runs them in the benchmark
# environment. The fixtures in tests/parity check the same layouts without the packages.
collect_ignore = [] if os.environ.get("VITLAB_LIVE") == "1" else ["live"]

# Float sums depend on the number of threads, and vitlab picks it from the cores idle at start: the
# tests that compare runs bit for bit need every run, in this process and in the subprocesses they
# start, to use the same count.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
