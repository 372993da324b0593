# Quick start: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
# Both create .venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test bench doctor clean

# A new .venv holds the CUDA build of torch (about 6.5 GB installed): say so up front rather
# than let pip fail half-way with 'No space left on device'.
NEED_GB := 8

$(VENV)/.run-installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
	  sys.exit(0 if free >= $(NEED_GB) else f"make: {free:.1f} GB free here; a new $(VENV) needs about $(NEED_GB) GB (torch with CUDA). Free some space and rerun.")'
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
