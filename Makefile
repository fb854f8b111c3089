# Everything runs from a virtual environment that the first target to need it creates.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Benchmarks and live parity run timm, which needs torchvision: a separate environment (about 6 GB).
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: venv test fuzz lint demo bench test-live clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The suite runs in TEST_WORKERS processes (pytest-xdist), one thread each: most tests are small and
# single-threaded work, so two processes on two cores finish sooner than one process with two threads.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

# The hardening suite with many more generated examples per model (tests/hardening/conftest.py) and the
# slow faults (a process of a two-process run killed); `make test` runs a few examples of each.
fuzz: $(STAMP)
	VITLAB_FUZZ_PROFILE=fuzz $(PY) -m pytest -q tests/hardening

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools benchmarks
	$(VENV)/bin/ruff format --check src tests tools benchmarks
	$(PY) tools/check_size.py src

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 timm transformers
	$(BENCH_PY) -m pip install -q -e '.[test]'
	touch $(BENCH_STAMP)

# Trains a small ViT on the built-in Fashion-MNIST subset (no download), prints its test accuracy and
# writes runs/demo/curves.png and runs/demo/attention.png.
demo: $(STAMP)
	$(PY) -m vitlab demo --output runs/demo

# `vitlab bench` over timm's models (against timm) and one variant of every other family, into docs/benchmarks.md.
# The older per-family scripts (benchmarks/swin.py, pvt.py, convit.py, segformer.py, scaling.py) still run alone.
bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/bench_all.py --threads 2 --rounds 7

# Full-size parity against the live reference packages (timm, transformers).
test-live: $(BENCH_STAMP)
	VITLAB_LIVE=1 $(BENCH_PY) -m pytest -q -s tests/live

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
