# Two entry points (README.md): `make demo` and `make test`. Both create or reuse the virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
CORES ?= 2
# Tests run in CORES pytest-xdist workers, one test file per worker at a time, so a file's module fixture (a
# whole workflow run) runs once.
XDIST ?= -n $(CORES) --dist loadfile
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-fast lint report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# The whole pipeline on the embedded synthetic brain (config.yaml), then the HTML report.
demo: setup
	$(BIN)/snakemake --cores $(CORES) --printshellcmds
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

# Everything: unit tests, the tiny workflow, the larger end-to-end runs and a one-node SLURM (about 11 minutes on 2 cores).
# The SLURM tests install packages and start daemons, so they run only with CI=true or AFO_TEST_SERVICES=1 (README).
test: setup
	$(BIN)/python -m pytest $(XDIST)

# For development: unit tests and the one tiny workflow run (under 3 minutes on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(XDIST)

# Static checks: ruff (lint and format, line length 120: pyproject.toml), snakefmt over the Snakefile and rules,
# Snakemake's own linter, and mypy over the public API and the file contracts ([tool.mypy] in pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint
	$(BIN)/mypy

clean:
	rm -rf results resources logs .snakemake
