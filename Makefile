# Two commands on a fresh machine: `make demo` and `make test`. Each builds its own virtual
# environment first (torch is pinned in the same pip command as everything that needs it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BASE := $(VENV)/.installed-base
DEMO_EXTRA := $(VENV)/.installed-demo

.PHONY: demo test test-fast bench lint protos check-protos clean

$(BASE): requirements/test.txt requirements/constraints.txt requirements/nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -r requirements/test.txt -c requirements/constraints.txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(DEMO_EXTRA): $(BASE) requirements/demo.txt
	$(PIP) install --no-deps -r requirements/demo.txt
	touch $@

## Run the default demo, offline.
demo: $(DEMO_EXTRA)
	$(VENV)/bin/fedmkt align demo

## Run every test (slow end-to-end ones included).
test: $(BASE)
	$(PY) -m pytest -q

test-fast: $(BASE)
	$(PY) -m pytest -q -m "not slow"

## Speed and memory benchmarks; each prints a ratio against a baseline measured in the same run.
bench: $(BASE)
	$(PY) -m benchmarks

lint: $(BASE)
	$(VENV)/bin/ruff check .

protos: $(BASE)
	$(PY) scripts/gen_protos.py

check-protos: $(BASE)
	$(PY) scripts/gen_protos.py --check

clean:
	rm -rf $(VENV)
