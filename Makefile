# Two commands do all the set-up from a fresh clone:
#   make reproduce   venv + install + the main job (marl-stability reproduce, 3 seeds per arm)
#   make test        venv + install with test extras + the fast test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/marl-stability

.PHONY: setup test test-slow test-all reproduce clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is a CPU build on this machine's disk; anything else pulls a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

reproduce: setup
	$(CLI) reproduce --out runs/reproduce --overwrite

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
