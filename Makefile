PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install test demo bench clean

# pip at -q -q prints errors only, not its warnings about the package index's setup.
PIP := $(BIN)/python -m pip -q -q --disable-pip-version-check

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	@echo "installing into $(VENV) (once, and again when pyproject.toml changes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) install -e '.[test,cluster]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@$(BIN)/ruff check --quiet .
	@$(BIN)/ruff format --check --quiet .
	@out=$$($(BIN)/lint-imports --no-cache 2>&1) || { echo "$$out"; exit 1; }; echo "$$out" | grep '^Contracts:'
	@$(BIN)/python -m pytest -q

# Offline: trains a small model on synthetic pictures, then indexes, searches and benchmarks.
demo: $(STAMP)
	@$(BIN)/retrieval demo --out demo

bench: $(STAMP)
	@$(BIN)/python benchmarks/indexing.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
