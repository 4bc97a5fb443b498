# Two commands do all set-up on a fresh machine (Python 3.10+ and the package registries only):
#   make demo   - retrieve-then-rerank demo on the embedded defaults
#   make test   - the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := constraints.txt requirements.txt $(wildcard packages/*/pyproject.toml integrations/*/pyproject.toml)

.PHONY: install demo test lint bench

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $(foreach pkg,$(wildcard integrations/*/pyproject.toml),-e $(dir $(pkg)))
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ettin-rerank demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py $(ARGS)
