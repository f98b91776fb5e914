# `make experiment NAME=depth_extrap`, `make analyze [RUN=...]`, `make test`, `make notebooks`; each sets up .venv when missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NAME ?= depth_extrap
PRESET ?=
ARGS ?=
RUN ?= runs/$(NAME)/latest

.PHONY: experiment analyze test test-slow test-torch notebooks notebooks-sync tables clean-venv

$(VENV)/.stamp-run: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-run
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

experiment: $(VENV)/.stamp-run
	$(PY) -m looprec experiment $(NAME) $(if $(PRESET),--preset $(PRESET)) $(if $(RESUME),--resume $(RESUME)) $(ARGS)

analyze: $(VENV)/.stamp-run
	$(PY) -m looprec analyze $(RUN)

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -m slow

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

test-torch: $(VENV)/.stamp-dev  # the official-checkpoint import against PyTorch (installs the torch extra)
	$(PY) -m pip install -q -e ".[torch]"
	$(PY) -m pytest -q -p no:xdist tests/test_torch_import.py

clean-venv:
	rm -rf $(VENV)
