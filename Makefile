# Quick start: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test bench doctor clean

$(VENV)/.run-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.run-installed
	$(BIN)/imgcluster demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/imgcluster bench --device cpu

doctor: $(VENV)/.run-installed
	$(BIN)/imgcluster doctor

clean:
	rm -rf $(VENV) imgcluster-demo .pytest_cache .benchmarks
