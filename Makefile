# Two commands do all set-up on a fresh machine (Python 3.10+ and the package registries only):
#   make demo   - retrieve-then-rerank demo on the embedded defaults
#   make test   - the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := constraints.txt requirements.txt $(wildcard packages/*/pyproject.toml integrations/*/pyproject.toml)

.PHONY: install demo test lint bench

# pip at -qq: errors only (its warnings are about the machine's pip configuration or other packages' metadata)
$(STAMP): $(SOURCES)
	@echo "Setting up $(VENV)/ with the versions pinned in constraints.txt (the first time takes several minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet --quiet -c constraints.txt -r requirements.txt
	@$(BIN)/python -m pip install --quiet --quiet --no-deps $(foreach pkg,$(wildcard integrations/*/pyproject.toml),-e $(dir $(pkg)))
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ettin-rerank demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py $(ARGS)
