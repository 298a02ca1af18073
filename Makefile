# issf — every target creates .venv and installs the project when needed (and does nothing extra otherwise).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install run test test-fast lint bench mutation notebook clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install issf with its dev tools

run: $(STAMP)  ## main job: generate the synthetic dataset if missing, train ISSF, test, print the mAP table
	$(BIN)/python run.py

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## tests without the slow (training / multi-process) ones
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check issf tests bench run.py

bench: $(STAMP)  ## benchmarks; results are appended to bench/results.json
	$(BIN)/python bench/run_all.py

mutation: $(STAMP)  ## re-create plausible bugs one at a time and check that the tests aimed at them catch them (~25 min on 2 cores; not in CI)
	$(BIN)/python bench/mutation.py

notebook: $(STAMP)  ## execute notebooks/analysis.ipynb on the latest run, or ISSF_RUN_DIR=<run> (outputs in logs/notebook/)
	@mkdir -p logs/notebook
	$(BIN)/jupyter execute --timeout=1800 notebooks/analysis.ipynb --output=../logs/notebook/analysis

clean:  ## remove caches and run outputs (keeps data/ and .venv)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
