# Two commands do everything on a fresh machine:
#   make demo   set up .venv, generate the synthetic dataset, train + evaluate MAS-Net on it
#   make test   set up .venv, lint with ruff and run the test suite (what CI runs)
# make test-fast runs the quick tier (not marked slow or distributed); make lint runs ruff.
# setup installs the project editable (pip install -e .): `import ops` works from any folder.
# The other packages are installed at the versions of constraints.txt (those the suite last
# passed with; its header says when and how to upgrade them).
# PyTorch is installed first, only if the venv has none: TORCH picks the build
# (default: the pinned wheel, a CPU build where a local one exists; GPU users
# may pass e.g. TORCH="torch==2.5.1" or pre-install their CUDA build in .venv).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup lint test test-fast demo bench figures clean

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt requirements-export.txt \
		requirements-video.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not distributed"

demo: setup
	PYTHON=$(PY) bash scripts/demo.sh

bench: setup
	PYTHON=$(PY) bash scripts/bench.sh

figures: setup
	PYTHON=$(PY) bash scripts/figures.sh

clean:
	rm -rf $(VENV) experiments score .pytest_cache
