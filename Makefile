# Two entry points: `make demo` and `make test`. Everything else is a helper of those.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck pytest bench fuzz-upstream clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(RUN_STAMP) $@

demo: $(RUN_STAMP)
	$(BIN)/python -m demo_backend.demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP)
	./scripts/ensure-system-packages.sh
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

# The upstream client against h11 on 100,000 generated answers (a bounded run is part of `make test`).
fuzz-upstream: $(DEV_STAMP)
	$(BIN)/python -m bench.upstream_differential --examples 100000

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
