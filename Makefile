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

.PHONY: install serve test lint typecheck pytest bench format clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The main job. Until the HTTP service lands (issue 6) this runs what exists: one end-to-end
# generation with the default model bundle, written as an MP4 under outputs/.
serve: $(STAMP)
	@echo "NOTE: the HTTP video service (hyv serve) is coming; running 'hyv generate' with the default model."
	@test -f weights/hyv-small/bundle.json || $(VENV)/bin/hyv init-weights --preset small --out weights/hyv-small
	$(VENV)/bin/hyv generate "a red circle moving right on a black background" --out outputs/demo.mp4

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy models kernels engine service training

# The kernel tests run the Triton kernels themselves on the CPU through Triton's interpreter;
# the rest of the suite uses the dispatch a CPU user gets (the PyTorch references).
pytest: $(STAMP)
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
