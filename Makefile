# Every target sets up .venv first; `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check --no-input
PRODUCT := schemas workflows activities workers cli services gateway

.PHONY: test test-local test-faults test-topology up lint fmt compile clean bench

test: compile lint
	$(BIN)/mypy
	$(BIN)/pytest

# The workflow tests again on a real Temporal dev server (days become seconds: ~2 minutes).
test-local: compile
	$(BIN)/pytest tests/test_workflow.py --workflow-environment local

# Crash and outage tests on real stacks, left out of `make test` (tests/test_faults.py, about 3
# minutes): worker SIGKILLed in every stage, dev server restarted, a service down past its retries.
# Figures in artifacts/faults.json.
test-faults: compile
	$(BIN)/pytest -m faults

# posflow as a cluster runs it, as processes (tests/test_topology.py, about 4 minutes): Debian's
# PostgreSQL on loopback for the store, a dev server, three workers (one stopped midway), each
# service in its own process and two gateways behind one round-robin address.
test-topology: compile
	$(BIN)/pytest -m topology

up: compile
	$(BIN)/posflow up

# posflow against the engine's floor on a dev server of its own: throughput, cost per application,
# callback latency, scale and replay (bench/README.md; `posflow bench --help` for smaller runs).
# The list-latency benchmark that used to run here: `.venv/bin/python -m bench.list_latency`.
bench: compile
	$(BIN)/posflow bench

# How long a bulk `posflow admin retry` of 100 parked cases takes, on a local dev server with the
# gateway and the real CLI (bench/bulk_retry.py; about a minute; not part of `make test`).
.PHONY: bench-bulk-retry
bench-bulk-retry: compile
	$(BIN)/python -m bench.bulk_retry

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The workflow sandbox re-imports the workflow module for every run, and these machines set
# PYTHONDONTWRITEBYTECODE=1: without precompiled .pyc files it is recompiled every time.
# compileall writes them regardless of that variable.
compile: $(VENV)/.installed
	$(BIN)/python -m compileall -q $(PRODUCT)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalled only when pyproject.toml changes, so repeated runs are fast.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev]'
	touch $@

clean:
	rm -rf .posflow .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
