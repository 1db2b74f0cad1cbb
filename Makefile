# The two commands a newcomer needs:  `make demo`  and  `make test`.
# `make test-slow` runs the heavy tests; `make bench` the benchmarks (`make bench-peers` first
# installs DiffDRR, the peer renderer, into .venv for drr_bench.py; it is never a dependency).
# TORCH selects the PyTorch build; the default is the CPU build. On a GPU machine:
#   make setup TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= xraymuscle-demo

.PHONY: setup demo test test-slow lint bench bench-peers default-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/xraymuscle demo --out $(DEMO_OUT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/phantom_bench.py
	$(BIN)/python benchmarks/drr_bench.py --memory
	$(BIN)/python benchmarks/screen_bench.py --base benchmarks/data/screen_base.npz --n 200 --bad-input 1000 --kill-resume 300

# DiffDRR 0.6.1 without its declared dependencies (torchvision, pyvista, timm are not needed to
# render), plus the ones its import does need.
bench-peers: setup
	$(BIN)/pip install --quiet --no-deps diffdrr==0.6.1
	$(BIN)/pip install --quiet torchio einops roma kornia fastcore imageio matplotlib seaborn

# The shipped model: phantom cohorts, DRRs, two cycles of training and evaluation (about 4 h on 2 CPU cores).
MODEL_WORK ?= model-work
default-model: setup
	$(BIN)/python benchmarks/accuracy.py --work $(MODEL_WORK) --restart-to 80 --install-default

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
