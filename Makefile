# SegStudies: set-up, demo and tests. `make demo` and `make test` each do all set-up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first: with an NVIDIA GPU the default (CUDA) build; without one the CPU build, taken from a local wheel
# folder where pip is configured with one, else from PyTorch's CPU index (a bare `torch` would pull GBs of CUDA).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "No GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(BIN)/python -m pip install --quiet --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --no-deps "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/segcore demo --out $(DEMO_OUT)

test: setup lint
	$(BIN)/python -m pytest Testing -q

lint: setup
	$(BIN)/ruff check SegCore Testing benchmarks

# Benchmarks run in their own environment, so the peer libraries never enter .venv.
bench:
	$(MAKE) setup VENV=.venv-bench
	.venv-bench/bin/python -m pip install --quiet -r benchmarks/requirements.txt
	.venv-bench/bin/python benchmarks/metrics.py
	.venv-bench/bin/python benchmarks/training.py --part all
	.venv-bench/bin/python benchmarks/inference.py

clean:
	rm -rf $(VENV) .venv-bench $(DEMO_OUT) .pytest_cache
