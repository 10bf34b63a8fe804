PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install test demo bench clean

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

# Offline: trains a small model on synthetic pictures, then indexes, searches and benchmarks.
demo: $(STAMP)
	$(BIN)/retrieval demo --out demo

bench: $(STAMP)
	$(BIN)/python benchmarks/indexing.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
