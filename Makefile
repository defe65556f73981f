# xaisparse — the two commands of the README are `make demo` and `make test`.
# Everything is installed from requirements.lock (a matched torch/torchvision pair) by uv,
# which resolves from PyPI only (it does not read pip's local wheel folder).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TOOLS ?= .tools
PY := $(VENV)/bin/python
UV := $(TOOLS)/bin/uv
STAMP := $(VENV)/.xaisparse-installed
JOBS ?= 2

.PHONY: venv lint test docs demo lock bench study study-quick study-v2 study-v1 lab clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

$(STAMP): requirements.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -c "import torch, torchvision.ops; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
	touch $(STAMP)

venv: $(STAMP)

## Regenerate the lock file after changing dependencies in pyproject.toml.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --all-extras -c constraints.txt --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu -o requirements.lock

## Lint and type checks (also the first step of `make test`).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## The whole test suite (unit, doctests, browser when Chromium is present). The notebooks are
## executed once, by the documentation build in tests/test_docs.py (a failing cell fails it).
## The order is shuffled on every run (pytest-randomly, the order-independence check; the header
## prints the seed, `-p randomly --randomly-seed=N` repeats an order); conftest.py seeds every test.
test: $(STAMP) lint
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

## The documentation site in $(DOCS_OUT): executes every notebook, warnings are errors.
## DOCS_EXECUTE=cache reuses the outputs of unchanged notebooks (jupyter-cache) while writing.
DOCS_OUT ?= build/docs/html
DOCS_EXECUTE ?= force
docs: $(STAMP)
	$(PY) docs/build.py --out $(DOCS_OUT) --execute $(DOCS_EXECUTE)

## The main job: train a CNN on the embedded digits data until it overfits.
demo: $(STAMP)
	$(VENV)/bin/xaisparse demo --out runs/demo

bench: $(STAMP)
	$(PY) bench/overhead.py

## Study v3 (studies/PROTOCOL.md and its v3 addendum): the grid through submitit, hours on 2 cores.
study: $(STAMP)
	nice -n 19 $(PY) -m studies --study v3 --out runs/study --workers 2

study-quick: $(STAMP)
	$(PY) -m studies --quick --out runs/study-quick --archs small_cnn --datasets digits

## Study v2's grid (parts A, R, T); its committed results are studies/results/v2/.
study-v2: $(STAMP)
	nice -n 19 $(PY) -m studies --study v2 --out runs/study-v2 --workers 2

## Study v1 is kept as committed results only (its script was retired; `git log -- studies/replicate.py`).
study-v1:
	@echo "study v1 is kept as results: studies/results/results.md and its tables (script retired: git log -- studies/replicate.py)"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache runs
