# The commands the README tells people to type.
PYTHON ?= python3
STAMP := .venv-installed

.PHONY: install demo test check bench

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## demo: run the main example on the embedded SQLite store
demo: $(STAMP)
	$(PYTHON) examples/quickstart.py

## test: the whole suite (PostgreSQL tests read USAGEFLOW_TEST_POSTGRES_URL)
test: $(STAMP)
	$(PYTHON) -m pytest

## check: lint, format and strict typing
check: $(STAMP)
	$(PYTHON) -m ruff check src tests benchmarks examples
	$(PYTHON) -m ruff format --check src tests benchmarks examples
	$(PYTHON) -m mypy

## bench: the benchmarks (by hand; they print ratios; PostgreSQL's reads USAGEFLOW_TEST_POSTGRES_URL)
bench: $(STAMP)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(PYTHON) benchmarks/sqlite_consume.py
	$(PYTHON) benchmarks/http_middleware.py
	$(PYTHON) benchmarks/http_middleware.py --http
