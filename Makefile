# keysetd: `make run` (the quickstart daemon) and `make test` (everything the suite needs, then the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo

.PHONY: run test lint typecheck pytest bench stress clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

PLUGINS := plugins/keysetd-vault plugins/keysetd-aws-kms plugins/keysetd-nats-callout

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS)) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[daemon,test]' $(foreach p,$(PLUGINS),-e '$(p)[test]')
	touch $(STAMP)

# Debian packages the tests drive for real (systemd-analyze for the unit files, etcd for
# fleet mode's store, Node.js and a JDK for the consumers of tests/interop).
system-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; }
	@command -v etcd >/dev/null 2>&1 || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			etcd-server etcd-client; }
	@command -v npm >/dev/null 2>&1 || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }
	@command -v javac >/dev/null 2>&1 || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			default-jdk-headless; }

# The JavaScript consumers and identity providers of the interop tests, as locked.
INTEROP := tests/interop
$(INTEROP)/node_modules/.installed: $(INTEROP)/package.json $(INTEROP)/package-lock.json | system-deps
	npm ci --prefix $(INTEROP) --no-audit --no-fund --loglevel=error
	touch $@

RUN_STAMP := $(VENV)/.installed-run

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[daemon]'
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	@mkdir -p $(DEMO)/source
	@test -f $(DEMO)/source/keyset.json || cp examples/quickstart/keyset.json $(DEMO)/source/keyset.json
	@echo "keysetd quickstart: source $(DEMO)/source/keyset.json"
	@echo "  outputs: $(DEMO)/jwks.json (verifiers), $(DEMO)/pem/ (verifiers), $(DEMO)/signer/keyset.json (signers)"
	@echo "  state:   $(DEMO)/state/   status: $(BIN)/keysetd status -c examples/quickstart/keysetd.toml"
	@echo "  edit the source and watch $(DEMO)/ follow; Ctrl-C stops."
	@mkdir -p $(DEMO)/signer
	$(BIN)/keysetd --log-format text run --config examples/quickstart/keysetd.toml

lint: $(STAMP)
	$(BIN)/ruff check keysetd plugins tests benchmarks
	$(BIN)/ruff format --check keysetd plugins tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy keysetd $(foreach p,$(PLUGINS),$(p)/$(subst -,_,$(notdir $(p))))

# Four workers, a test file each at a time (its module fixtures stay on one worker): the
# suite waits on servers and subprocesses more than it computes, so on 2 cores four workers
# finish in 150-200 s where two take 240-260 s (measured).
# Bytecode first, as an install has it: with PYTHONDONTWRITEBYTECODE=1 (CI sets it) an
# editable keysetd is compiled from source by every process the tests start (~100 ms each).
pytest: $(STAMP) system-deps $(INTEROP)/node_modules/.installed
	$(BIN)/python -m compileall -q keysetd plugins
	$(BIN)/pytest -q -n 4 --dist loadfile

test: lint typecheck pytest

# The reliability harness at full size (tests/RELIABILITY.md): 500 kill -9 rounds at named
# failpoints and random instants, a 20,000-cycle soak, >= 100,000 Hypothesis examples (7
# targets x 15,000), atheris over the decoders, and the planner's rotation properties at
# 5,000 sequences. Every part stops by itself: a round/cycle budget in seconds, an example
# count, a run count and -max_total_time. `make test` runs the small subset.
STRESS_ROUNDS ?= 500
SOAK_CYCLES   ?= 20000
FUZZ_EXAMPLES ?= 15000
ATHERIS_RUNS  ?= 2000000
PLAN_EXAMPLES ?= 5000

stress: $(STAMP)
	@$(BIN)/python -m pip install -q atheris || echo "stress: atheris did not install; its test skips"
	STRESS_ROUNDS=$(STRESS_ROUNDS) STRESS_BUDGET_SECONDS=1500 \
	SOAK_CYCLES=$(SOAK_CYCLES) SOAK_BUDGET_SECONDS=900 \
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ATHERIS_RUNS=$(ATHERIS_RUNS) ATHERIS_SECONDS=300 \
	PLAN_EXAMPLES=$(PLAN_EXAMPLES) \
		$(BIN)/pytest -q -s --timeout=3600 --hypothesis-show-statistics \
		tests/test_reliability_*.py tests/test_plan_properties.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(DEMO) .mypy_cache .ruff_cache .pytest_cache
