# The two commands a fresh machine needs: `make demo` runs the main job on the embedded default,
# `make test` runs the test suite; `make app` serves the web page. All create (or reuse) .venv and
# install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv app clean

# The page's browser tests drive Debian's Chromium (not Playwright's download: no network needed).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m restore.demo

$(CHROMIUM):
	$(SUDO) apt-get install -y -q --no-install-recommends chromium || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium)

app: $(VENV)/.installed
	$(PY) -m restore.app

test: $(VENV)/.installed $(CHROMIUM)
	$(PY) -m pytest -q

clean:
	rm -rf demo_out .pytest_cache
