# keysetd: `make run` (the quickstart daemon) and `make test` (everything the suite needs, then the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo

.PHONY: run test lint typecheck pytest bench stress clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@mkdir -p $(DEMO)/source
	@test -f $(DEMO)/source/keyset.json || cp examples/quickstart/keyset.json $(DEMO)/source/keyset.json
	@echo "keysetd quickstart: source $(DEMO)/source/keyset.json"
	@echo "  outputs: $(DEMO)/jwks.json (verifiers), $(DEMO)/pem/ (verifiers), $(DEMO)/signer/keyset.json (signers)"
	@echo "  state:   $(DEMO)/state/   status: $(BIN)/keysetd status -c examples/quickstart/keysetd.toml"
	@echo "  edit the source and watch $(DEMO)/ follow; Ctrl-C stops."
	@mkdir -p $(DEMO)/signer
	$(BIN)/keysetd --log-format text run --config examples/quickstart/keysetd.toml

lint: $(STAMP)
	$(BIN)/ruff check keysetd tests benchmarks
	$(BIN)/ruff format --check keysetd tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy keysetd

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(DEMO) .mypy_cache .ruff_cache .pytest_cache
