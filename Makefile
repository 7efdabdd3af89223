# planbus: every target creates .venv on demand from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo dev lint install clean bench bench-report

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/planbus demo

dev: $(STAMP)
	$(BIN)/planbus dev

# ARGS: --quick, --only NAME, --json-dir DIR (tests/bench/run.py --help).
bench: $(STAMP)
	$(BIN)/python tests/bench/run.py $(ARGS)

bench-report: $(STAMP)
	$(BIN)/python tests/bench/report.py

lint: $(STAMP)
	$(BIN)/ruff check functions tests
	$(BIN)/ruff format --check functions tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .planbus .pytest_cache .mypy_cache .ruff_cache
