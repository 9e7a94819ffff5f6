# gptoss-mlx developer tasks. `make demo` and `make test` work on a fresh machine, offline.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DEMO := .cache/demo
UNAME := $(shell uname -s)

.PHONY: setup test lint bench demo clean

$(BIN)/gptoss: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

setup: $(BIN)/gptoss ## create .venv and install the project with its dev tools

test: setup ## run the test suite
	$(PY) -m pytest -q

lint: setup
	$(BIN)/ruff check gptoss_mlx scripts tests
	$(BIN)/ruff format --check gptoss_mlx scripts tests

bench: setup ## speed and memory against mlx-lm on a 20b-width synthetic checkpoint
	$(PY) scripts/bench.py

demo: setup ## build a tiny harmony-speaking model, convert it, and chat with it
	$(PY) scripts/demo.py $(DEMO)

clean:
	rm -rf .cache .pytest_cache
