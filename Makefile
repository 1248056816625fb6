# The two commands a fresh machine needs: `make demo` runs the main job on the embedded default,
# `make test` runs the test suite. Both create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m restore.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf demo_out .pytest_cache
