# flowrl — `make train` and `make test` work as the very first command on a fresh clone:
# both create .venv with pip (once; a stamp file records it) before doing their job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flowrl-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast train sample plan bench bench-gpu gpu-wheels study-gpu lint pretrain ui mlflow-ui clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install flowrl (editable) with its test extras, pinned by requirements.lock

test: $(STAMP) ## run the whole test suite, slow end-to-end tests included (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP) ## the suite without the slow-marked tests
	$(PY) -m pytest -m "not slow"

train: $(STAMP) ## the main job: GRPO on the embedded default (tiny model, offline rewards), tracked in MLflow
	$(PY) -m flowrl.train

sample: $(STAMP) ## sample the tiny model on held-out prompts and score every reward
	$(PY) -m flowrl.sample

plan: $(STAMP) ## print the default method's step plan and per-prompt budget
	$(PY) -m flowrl.plan

HOST ?= 127.0.0.1
PORT ?= 5000
STORE ?= sqlite:///mlflow.db

ui: $(STAMP) ## the MLflow UI on the project's store (sqlite:///mlflow.db) at http://127.0.0.1:5000, experiments opening on their runs (HOST=, PORT=, STORE=)
	$(PY) -m flowrl.mlflow_ui --store $(STORE) --url http://$(HOST):$(PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host $(HOST) --port $(PORT) --workers 1 --app-name flowrl

mlflow-ui: ui ## alias of ui

bench: $(STAMP) ## measured performance ratios, side by side in one run
	$(PY) -m benchmarks.bench

bench-gpu: ## the one-call GPU suite, writes experiments/bench/gpu.md (on the GPU image: make gpu-wheels here, carry wheels/)
	test -x $(PY) || pip install --quiet --no-deps wheels/*.whl
	PYTHONPATH=src:. $(or $(wildcard $(PY)),python) -m benchmarks.bench --suite gpu

gpu-wheels: $(STAMP) ## download what the GPU image lacks (benchmarks/gpu_wheels.txt, pinned by requirements.lock) into wheels/ as CPython 3.12 wheels
	@pins=$$(grep -v '^#' benchmarks/gpu_wheels.txt | grep . | while read n; do grep -iE "^$$(echo $$n | sed 's/[-_]/[-_]/g')==" requirements.lock || { echo "gpu-wheels: $$n is not pinned in requirements.lock" >&2; exit 1; }; done) && \
	for pin in $$pins; do \
	  $(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	    -d wheels $$pin 2>/dev/null || $(PY) -m pip wheel --quiet --no-deps -w wheels $$pin; \
	done  # pip wheel builds the sdist-only ones (antlr4 4.9.3) here: pure Python, any version
	rm -f wheels/*.tar.gz
	du -sh wheels

study-gpu: ## the toy study at 10x the seeds in one device call (benchmarks/toy_study_gpu.sh; on the GPU image, carry wheels/)
	bash benchmarks/toy_study_gpu.sh

pretrain: $(STAMP) ## regenerate the shipped tiny model and tiny_clip weights (~12 min on 2 cores)
	$(PY) -m flowrl.pretrain
	$(PY) -m flowrl.rewards.train_tiny_clip

lint: $(STAMP) ## ruff (style), vulture (dead code; what only yaml or a framework calls is in .vulture_whitelist.py)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/vulture src/flowrl benchmarks tests .vulture_whitelist.py --min-confidence 60 --ignore-decorators "@pytest.fixture"

clean: ## remove the venv and run outputs (keeps mlflow.db)
	rm -rf $(VENV) outputs multirun .pytest_cache
