# The commands the README tells people to type. Everything runs in a project virtual
# environment (.venv), made on first use: system Pythons refuse global installs (PEP 668),
# and a demo that needs only pydantic has no business in the global interpreter.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The install stamps live inside the venv: a new venv (or a new interpreter) starts without
# them, so it is always installed into before it is used.
CORE := $(VENV)/.usageflow-core
DEV := $(VENV)/.usageflow-dev
BENCH := $(VENV)/.usageflow-bench
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(CORE): pyproject.toml | $(PY)
	$(PIP) -e .
	@touch $@

$(DEV): pyproject.toml | $(PY)
	$(PIP) -e ".[dev]"
	@touch $@ $(CORE)

$(BENCH): pyproject.toml $(DEV)
	$(PIP) -e ".[bench]"
	@touch $@

install: $(DEV)

## demo: run the main example on the embedded SQLite store (installs the core only)
demo: $(CORE)
	$(PY) examples/quickstart.py

## test: the whole suite (PostgreSQL tests read USAGEFLOW_TEST_POSTGRES_URL)
test: $(DEV)
	$(PY) -m pytest

## check: lint, format and strict typing
check: $(DEV)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples
	$(PY) -m mypy

## bench: the benchmarks (by hand; they print ratios; PostgreSQL's reads USAGEFLOW_TEST_POSTGRES_URL)
bench: $(BENCH)
	$(PY) benchmarks/sqlite_consume.py
	$(PY) benchmarks/http_middleware.py
	$(PY) benchmarks/http_middleware.py --http

clean:
	rm -rf $(VENV)
