# syntax=docker/dockerfile:1
#
# hyvideo-serve: one image for the API, the GPU workers and the all-in-one `hyv serve`.
#
#   docker build -t hyvideo-serve .                                   # torch CUDA build, SDPA attention
#   docker build -t hyvideo-serve --build-arg FLASH_ATTN_VERSION=2.8.3.post2 \
#                                 --build-arg XFORMERS_VERSION=0.0.35 .   # + flash-attn, xformers
#
# Stage 1 (builder, CUDA *devel*: nvcc for flash-attn) makes /opt/venv and /app; stage 2 (CUDA
# *runtime*) copies them, so the compilers never reach the final image. PyTorch's CUDA wheels carry
# their own CUDA libraries (cuBLAS, cuDNN, NCCL); the host needs only the NVIDIA driver and the
# NVIDIA container toolkit (docs/operations.md).
#
# Weights: the small bundled model (weights/hyv-small, ~40 MB) is baked in at /app/weights/hyv-small
# (and its teacher, weights/hyv-small-teacher, when the checkout has it: HYV_MODELS=hyv-small,hyv-small-teacher)
# (made with random weights when the build context has none, as `make serve` does). Big weights
# (HunyuanVideo 13B, converted with `hyv convert`) are never baked in: mount them at /weights.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS builder

# The pinned PyTorch CUDA build: torch==TORCH_VERSION from the PyTorch index of TORCH_CUDA.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
# Optional attention backends (empty = not installed; the engine falls back to SDPA):
# flash-attn is compiled here against the torch above (slow: set MAX_JOBS to the cores you have);
# xformers comes from the PyTorch index and must be the build made for TORCH_VERSION.
ARG FLASH_ATTN_VERSION=
ARG XFORMERS_VERSION=
ARG MAX_JOBS=4
# 1 = write a random-weight small bundle when the context has no weights/hyv-small (as `make serve`).
ARG INIT_SMALL_BUNDLE=1

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ninja-build \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel packaging \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
RUN if [ -n "${XFORMERS_VERSION}" ]; then \
        pip install --no-deps "xformers==${XFORMERS_VERSION}" --index-url "${TORCH_INDEX_URL}"; fi
RUN if [ -n "${FLASH_ATTN_VERSION}" ]; then \
        MAX_JOBS=${MAX_JOBS} pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; fi

WORKDIR /app
# The dependencies first (a layer that survives source edits), read from pyproject.toml itself:
# the runtime ones plus the `text-encoders` extra (transformers, tokenizers, sentencepiece: the
# 13B's LLaVA-LLaMA-3 + CLIP encoders, HYV_TEXT_ENCODER), at the versions of the committed lock
# file (requirements/lock.txt, `make lock`), the same set `make install` and CI use.
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY requirements ./requirements
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['text-encoders']))" > /tmp/requirements.txt \
    && pip install -c requirements/lock.txt -r /tmp/requirements.txt \
    && python3 -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"
# One import package, hyv (models, kernels, engine, service, training below it).
COPY hyv ./hyv
COPY benchmarks ./benchmarks
# Editable: the code runs from /app, so data files (hyv/service/web) are where the code looks for them.
RUN pip install --no-deps -e .
# weights/ holds README.md and, when the context has it, the bundled hyv-small (see .dockerignore).
COPY weights ./weights
RUN if [ ! -f weights/hyv-small/bundle.json ] && [ "${INIT_SMALL_BUNDLE}" = 1 ]; then \
        hyv init-weights --preset small --out weights/hyv-small; fi

# ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime

# gcc, libc6-dev and python3-dev: Triton compiles a small launcher stub with the host compiler the
# first time a fused kernel runs.
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Non-root. /data is the shared storage volume (videos, images, thumbnails); /weights the mount
# point for big weights; the metrics folder is per container (hyv/service/metrics_exporter.py says why).
ARG UID=10001
RUN groupadd --system --gid ${UID} hyv \
    && useradd --system --uid ${UID} --gid hyv --create-home --home-dir /home/hyv --shell /usr/sbin/nologin hyv \
    && mkdir -p /data /weights /tmp/hyv-metrics \
    && chown hyv:hyv /data /tmp/hyv-metrics

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=root:root /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/hyv \
    HYV_DATA_DIR=/data \
    HYV_WEIGHTS=/app/weights/hyv-small \
    PROMETHEUS_MULTIPROC_DIR=/tmp/hyv-metrics

WORKDIR /app
VOLUME ["/data", "/weights"]
USER hyv
# 8000: the API; 9101: a worker's metrics (python -m hyv.service.metrics_exporter).
EXPOSE 8000 9101

# The API's liveness; compose and Kubernetes give workers their own check (`... healthcheck worker`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "hyv.service.healthcheck", "api"]

# tini as PID 1: signals reach the service (SIGTERM = graceful stop) and zombies are reaped.
ENTRYPOINT ["/usr/bin/tini", "--"]
# All-in-one default (its own Redis, one worker, the API); compose/Kubernetes run the parts.
# Without HYV_API_KEYS the API binds loopback only, so set keys to reach it from outside.
CMD ["hyv", "serve", "--host", "0.0.0.0", "--port", "8000"]
