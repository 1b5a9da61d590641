# busi-course: two commands.
#   make course   build .venv, find the data, run every notebook (PROFILE=cpu by default)
#   make test     build .venv if needed, run the test suite (notebooks in the quick profile)
#   make book     render the executed chapters of runs/$(PROFILE) into a static site (after make course)
#   make app      serve the demo as a web page on http://127.0.0.1:$(APP_PORT) (needs a trained run)
#   make test-fast the unit tests that need no course run, data or training (about 2 minutes)
# REPRODUCIBLE=0 turns off reproducible mode (busi_utils/core/reproducible.py): faster on many
# cores, but your numbers will differ from the book's in the last digits, and then beyond.
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
PROFILE ?= cpu
SEED    ?= 42
APP_PORT ?= 8866
ifeq ($(origin REPRODUCIBLE),undefined)
REPRODUCIBLE := $(or $(BUSI_REPRODUCIBLE),1)
endif
export BUSI_REPRODUCIBLE := $(REPRODUCIBLE)
BIN      = $(VENV)/bin

.PHONY: env course test test-fast book lab app results clean-runs

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

course: env
	$(BIN)/python -m busi_utils.course --profile $(PROFILE) --seed $(SEED)
	$(BIN)/python scripts/results_table.py runs/$(PROFILE)/metrics.json

test: env
	$(BIN)/ruff check busi_utils scripts tests notebooks
	$(BIN)/ruff format --check busi_utils scripts tests notebooks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: env
	$(BIN)/python -m pytest -m "not course and not slow" $(PYTEST_ARGS)

book: env
	$(BIN)/python -m busi_utils.book --run-dir runs/$(PROFILE)

app: env
	$(BIN)/python -m busi_utils.serve.webapp --port $(APP_PORT)

lab: env
	$(BIN)/python -m busi_utils.core.pinned $(BIN)/jupyter lab notebooks/

clean-runs:
	rm -rf runs/
