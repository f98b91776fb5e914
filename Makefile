# `make experiment NAME=depth_extrap`, `make analyze [RUN=...]`, `make test [TESTS=tests/test_cli.py]`, `make test-torch`,
# `make notebooks`, `make test-slow`; each sets up .venv when missing or stale (`make venv` only that). CI runs the tests: .ci/run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NAME ?= depth_extrap
PRESET ?=
ARGS ?=
TESTS ?=
RUN ?= runs/$(NAME)/latest

.PHONY: venv experiment analyze test test-slow test-torch notebooks notebooks-sync tables clean-venv

$(VENV)/.stamp-run: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-run
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-dev

experiment: $(VENV)/.stamp-run
	$(PY) -m looprec experiment $(NAME) $(if $(PRESET),--preset $(PRESET)) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

analyze: $(VENV)/.stamp-run
	$(PY) -m looprec analyze $(RUN)

# TESTS: test files (or pytest node ids) to run instead of the whole default suite.
test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -n 2 --dist loadfile $(TESTS)

# The science tier (tests/test_science*.py: one test per headline phenomenon at the smallest scale that shows it)
# and the end-to-end fault, layout and variants tests; test files spread over 2 workers.
test-slow: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -m slow -n 2 --dist loadfile --durations=0

# Rewrites the results tables of README.md and docs/ (between <!-- table: ID --> markers) from results/*.json.
tables: $(VENV)/.stamp-run
	$(PY) -m looprec tables

# Executes every notebook headless with SMOKE on (nbclient, this venv's python as the kernel); fails on any error
# or a missing figure. Executed copies go to runs/notebooks/.
notebooks: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -p no:xdist -m notebooks tests/test_notebooks.py -s

# Writes notebooks/*.ipynb (outputs stripped) from their sources notebooks/*.py (jupytext percent format).
notebooks-sync: $(VENV)/.stamp-dev
	$(VENV)/bin/jupytext --quiet --update --to ipynb notebooks/*.py

# The official-checkpoint import against PyTorch: installs the pinned torch extra (pip's configured indexes; on this
# project's machines a find-links folder holds torch's CPU build, elsewhere PyPI's build) and fails, rather than
# skips, when torch does not import.
$(VENV)/.stamp-torch: pyproject.toml $(VENV)/.stamp-dev
	$(PY) -m pip install -q -e ".[torch]"
	touch $@

test-torch: $(VENV)/.stamp-torch
	$(PY) -c "import torch, transformers, safetensors"
	$(PY) -m pytest -q -p no:xdist tests/test_torch_import.py

clean-venv:
	rm -rf $(VENV)
