# Quickstart targets. `make demo` and `make test` each work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_AUTH_MODE ?= token
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test lint bench clean

$(BIN)/cpt: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned here (a local CPU wheel); the package itself only asks for a torch range.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/cpt

# lm-evaluation-harness (downstream evaluations between rounds): optional, the tests use it
$(VENV)/.eval-extra: $(BIN)/cpt
	$(BIN)/pip install -q -e '.[dev,eval]'
	touch $@

demo: setup
	$(BIN)/cpt demo

test: setup $(VENV)/.eval-extra
	bash .ci/sysdeps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf cpt-home .pytest_cache
