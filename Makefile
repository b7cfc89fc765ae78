# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv when absent and installs torch==2.13.0 first: a bare `torch` would pull a
# multi-GB CUDA build on a machine without it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo
MODEL ?= hpcl4sr

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.core
	DEMO_DIR=$(DEMO_DIR) MODEL=$(MODEL) PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

test: $(VENV)/.dev
	$(BIN)/python -m pytest

bench: $(VENV)/.core
	PYTHON=$(CURDIR)/$(BIN)/python bash benchmarks/run_all.sh bench

clean:
	rm -rf $(DEMO_DIR)
