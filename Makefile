# The commands a newcomer needs. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The local model extra compiles llama-cpp-python (about 5 minutes on 2 cores, once per environment).
# On x86-64 it is built for AVX2, not for the build machine's own CPU: llama.cpp's native build (AVX-512
# here) segfaulted on the first decode of the packaged Gemma 3 270M on this project's machines (0.3.36,
# 2026-12-02). Set LLAMA_CMAKE_ARGS= to build natively, or to your own flags (CUDA, Metal...). It is built
# without pip's cache: a wheel built earlier with other flags would be reused otherwise.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
LLAMA ?= llama-cpp-python>=0.3.0
# The training extra needs torch: TORCH is installed first, pinned, because any looser requirement pulls
# a multi-GB CUDA build here (on a CUDA machine: install your torch first and run with TORCH=).
EXTRAS ?= local,training
TORCH  ?= torch==2.13.0

# The SkyPilot SDK lives in its own environment: skypilot 0.14.1 would downgrade the gateway's uvicorn and
# click (the hot path). The skypilot pod provider runs it as a subprocess (cloud/skypilot.py).
SKY_VENV ?= .venv-sky
SKYPILOT ?= skypilot==0.14.1

.PHONY: run test test-fast lint format bench bench-streams bench-pods install install-dev sky-env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama-cpp-python first (when the local extra is wanted), built with LLAMA_CMAKE_ARGS; then the rest.
define install_llama
$(if $(filter local,$(subst $(comma), ,$(EXTRAS))),CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/python -m pip install --quiet --no-cache-dir '$(LLAMA)')
endef
comma := ,

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(if $(TORCH),$(BIN)/python -m pip install --quiet '$(TORCH)')
	$(install_llama)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

$(VENV)/.installed-dev-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(if $(TORCH),$(BIN)/python -m pip install --quiet '$(TORCH)')
	$(install_llama)
	$(BIN)/python -m pip install --quiet -e '.[dev,$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)
install-dev: $(VENV)/.installed-dev-$(EXTRAS)

## make .venv-sky (or sky-env): the SkyPilot SDK, pinned, in its own environment (no cloud extras: those
## belong where the SkyPilot API server runs)
$(SKY_VENV)/.installed-skypilot:
	$(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SKY_VENV)/bin/python -m pip install --quiet '$(SKYPILOT)'
	touch $@

$(SKY_VENV): $(SKY_VENV)/.installed-skypilot
sky-env: $(SKY_VENV)/.installed-skypilot

## make run: the gateway on its embedded default (SQLite, local files, the mock and the local model);
## the first run creates an API key and prints it once (--first-key)
run: install
	$(BIN)/hybridgate serve --first-key $(ARGS)

## make test: install what the tests need and run the whole suite
test: install-dev sky-env
	HYBRIDGATE_REQUIRE_SKYPILOT=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-fast: the inner loop, without the local real model
test-fast: install-dev sky-env
	HYBRIDGATE_REQUIRE_SKYPILOT=1 $(BIN)/python -m pytest -m "not local_model" $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/hybridgate

format: install-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install-dev
	$(BIN)/python benchmarks/overhead.py $(ARGS)

## make bench-streams: thousands of concurrent long streams, hybridgate against bare proxies (benchmarks/streams.py)
bench-streams: install-dev
	$(BIN)/python benchmarks/streams.py $(ARGS)

## make bench-pods: a day of bursty traffic on cloud pods, simulated: hybridgate's scaler against always-on
## and a SkyServe-style QPS autoscaler (benchmarks/pods_sim.py; no cloud, about 2 s)
bench-pods: install-dev
	$(BIN)/python benchmarks/pods_sim.py $(ARGS)

clean:
	rm -rf $(VENV) $(SKY_VENV) .pytest_cache .ruff_cache .mypy_cache build dist src/*.egg-info
