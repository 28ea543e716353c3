# GPU image: CUDA runtime + a pinned PyTorch CUDA build + the project.
# The full multi-stage image (flash-attn/xformers build args, non-root user, healthcheck) comes with
# the deploy issue; this one runs `hyv` on a GPU box today.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY kernels ./kernels
COPY engine ./engine
COPY service ./service
COPY training ./training
COPY deploy ./deploy
COPY benchmarks ./benchmarks
RUN pip install .

# Big weights are mounted, not baked in.
VOLUME ["/app/weights"]
ENTRYPOINT ["hyv"]
CMD ["--help"]
