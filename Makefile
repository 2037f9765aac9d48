# GreenMesh: the two commands a newcomer runs are `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint bench proto clean

# Create the virtualenv and install the project with its dev tools; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)  ## start NATS, the three services and the gateway on this machine (Ctrl-C stops them)
	$(BIN)/greenmesh up

test: $(STAMP)  ## the whole suite: unit, integration (real NATS, SQLite, PostgreSQL), contract, CLI
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff, mypy (strict) and buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/buf_lint.py

bench: $(STAMP)  ## every benchmark; one JSON line per figure
	$(BIN)/python -m bench

proto: $(STAMP)  ## regenerate gen/ from protos/
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf .greenmesh build .pytest_cache .mypy_cache .ruff_cache
