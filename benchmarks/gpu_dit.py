"""The DiT parts of benchmarks/gpu.py: build our HunyuanVideoDiT and diffusers'
HunyuanVideoTransformer3DModel from one DiTConfig with random weights straight on the device,
time forward steps (peak memory, OOM recorded as a result), count the step's FLOPs, run one
sequence-parallel rank under torchrun, and compare FP8 linears with bf16.

Random weights: the step time of a dense transformer does not depend on the weights' values, so
the 13B model is built on the meta device and materialised on the GPU with a cheap random init
(no 13B CPU init, no checkpoint download).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DiTConfig, dit_preset
from hyv.models.dit_loading import diffusers_config

logger = logging.getLogger(__name__)

# HunyuanVideo's causal 3D VAE: 4x in time (plus the first frame), 8x in space.
VAE_TIME, VAE_SPACE = 4, 8


@dataclass(frozen=True)
class VideoSize:
    """A generated video's size in pixels and frames, and its latent / token grid."""

    height: int
    width: int
    frames: int

    def __post_init__(self) -> None:
        if self.height % VAE_SPACE or self.width % VAE_SPACE:
            raise ValueError(f"height x width {self.height}x{self.width} must be multiples of {VAE_SPACE}")
        if self.frames < 1 or (self.frames - 1) % VAE_TIME:
            raise ValueError(f"frames={self.frames} must be 4k+1 (the VAE's time compression)")

    @property
    def label(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"

    def latent_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the latent video: 544x960x129 -> (33, 68, 120)."""
        return (self.frames - 1) // VAE_TIME + 1, self.height // VAE_SPACE, self.width // VAE_SPACE

    def video_tokens(self, config: DiTConfig) -> int:
        return math.prod(n // p for n, p in zip(self.latent_shape(), config.patch_size, strict=True))


def parse_size(text: str) -> VideoSize:
    """'720x1280x129' (height x width x frames) -> VideoSize."""
    try:
        height, width, frames = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HEIGHTxWIDTHxFRAMES, e.g. 720x1280x129") from None
    return VideoSize(height, width, frames)


@torch.no_grad()
def random_init_(model: nn.Module, seed: int = 0) -> None:
    """Cheap random weights in place, on the model's device: matrices ~ N(0, 1/fan_in) (activations
    keep their scale through the blocks), norm weights 1, other vectors 0."""
    gen = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=gen)
        elif "norm" in name:
            param.fill_(1.0)
        else:
            param.zero_()


def _materialise(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    # meta -> dtype is free; to_empty then allocates the weights once, directly in `dtype`.
    model = model.to(dtype).to_empty(device=device)
    random_init_(model, seed)
    return model.eval().requires_grad_(False)


def build_ours(config: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> HunyuanVideoDiT:
    with torch.device("meta"):
        model = HunyuanVideoDiT(config)
    out = _materialise(model, device, dtype, seed)
    assert isinstance(out, HunyuanVideoDiT)
    return out


def build_diffusers(config: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**diffusers_config(config))
    return _materialise(cast(nn.Module, model), device, dtype, seed)


def make_inputs(
    config: DiTConfig,
    size: VideoSize,
    text_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """One denoising step's inputs (batch 1), identical for both models and on every rank. Every
    text token is real, so neither model can save work by dropping padding."""
    gen = torch.Generator(device).manual_seed(seed)
    T, H, W = size.latent_shape()

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    inputs = {
        "hidden_states": randn(1, config.in_channels, T, H, W),  # (B, C, T, H, W)
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": randn(1, text_tokens, config.text_dim),  # (B, Lt, text_dim)
        "encoder_attention_mask": torch.ones(1, text_tokens, dtype=torch.long, device=device),
        "pooled_projections": randn(1, config.pooled_dim),
    }
    if config.guidance_embed:
        inputs["guidance"] = torch.tensor([6000.0], device=device)
    return inputs


def dit_flops(config: DiTConfig, video_tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs of one forward through the blocks (2 per multiply-add): every double and single
    block does 12 d^2 multiply-adds per token in its linears (qkv 3, proj 1, MLP 2 x mlp_ratio;
    linear1 + linear2 of a single block are the same sum) and 2 L^2 d in attention (QK^T, PV).
    Embedders and the final layer are < 0.1% at video sizes and left out."""
    d, length = config.hidden_size, video_tokens + text_tokens
    blocks = config.depth_double + config.depth_single
    linear_macs = (4 + 2 * config.mlp_ratio) * d * d * length
    attention_macs = 2 * length * length * d
    return 2.0 * blocks * (linear_macs + attention_macs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def time_steps(
    step: Callable[[], Any],
    device: torch.device,
    warmup: int,
    repeats: int,
    deadline: float | None = None,
    barrier: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Wall time of `step` (synchronised), after `warmup` untimed calls. At least one measured
    call; further ones only while they fit before `deadline` (time.monotonic). Peak memory counts
    everything allocated on the device during the calls, weights included. An out-of-memory error
    is returned as {"error": ...}, not raised."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples: list[float] = []
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        _sync(device)
        warmup_s = time.perf_counter() - start
        for i in range(repeats):
            if i and deadline is not None and time.monotonic() + samples[-1] > deadline:
                logger.info("time budget: %d of %d measured steps", i, repeats)
                break
            if barrier is not None:
                barrier()
            start = time.perf_counter()
            step()
            _sync(device)
            samples.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as exc:
        release_memory()
        return {"error": error_text(exc), "oom": True}
    row: dict[str, Any] = {"step_s": statistics.median(samples), "steps_s": samples, "warmup_s": warmup_s}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def forward_fn(model: nn.Module, inputs: dict[str, torch.Tensor], diffusers: bool) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode():
            return model(**inputs, return_dict=False) if diffusers else model(**inputs)

    return step


def bench_model(
    kind: str,
    config: DiTConfig,
    size: VideoSize,
    text_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    deadline: float | None,
) -> dict[str, Any]:
    """Build `kind` ("ours" or "diffusers") with random weights and time its step at `size`; the
    model is freed before returning, so the two models never share the device's memory."""
    row: dict[str, Any] = {
        "model": kind,
        "size": size.label,
        "latent": list(size.latent_shape()),
        "video_tokens": size.video_tokens(config),
        "text_tokens": text_tokens,
    }
    if deadline is not None and time.monotonic() >= deadline:
        return {**row, "skipped": "time budget spent"}
    try:
        start = time.perf_counter()
        model = (build_diffusers if kind == "diffusers" else build_ours)(config, device, dtype)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["build_s"] = time.perf_counter() - start
        inputs = make_inputs(config, size, text_tokens, device, dtype)
        row.update(
            time_steps(forward_fn(model, inputs, kind == "diffusers"), device, warmup, repeats, deadline)
        )
        del model, inputs
    except torch.OutOfMemoryError as exc:
        row.update(error=error_text(exc), oom=True)
    release_memory()
    if "step_s" in row:
        flops = dit_flops(config, row["video_tokens"], text_tokens)
        row.update(flops=flops, tflops=flops / row["step_s"] / 1e12)
    logger.info("dit %s", {k: v for k, v in row.items() if k != "steps_s"})
    return row


def bench_fp8(
    config: DiTConfig,
    size: VideoSize,
    text_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
    deadline: float | None,
) -> dict[str, Any]:
    """Our DiT at `size`: its step time in `dtype` (bf16 on a GPU), then the same model after
    `quantize_dit_` (FP8 block linears). Skipped (with the reason) if hyv.models.fp8 is missing."""
    try:
        from hyv.models.fp8 import fp8_supported, quantize_dit_
    except ImportError as exc:
        return {"skipped": f"hyv.models.fp8.quantize_dit_ is unavailable ({error_text(exc)})"}
    result: dict[str, Any] = {
        "size": size.label,
        "video_tokens": size.video_tokens(config),
        # without FP8 tensor cores the layers dequantize their weights for every call
        "path": "torch._scaled_mm" if fp8_supported(device) else "dequantized weights (no FP8 tensor cores)",
    }
    try:
        model = build_ours(config, device, dtype)
    except torch.OutOfMemoryError as exc:
        release_memory()
        return {**result, "error": error_text(exc), "oom": True}
    inputs = make_inputs(config, size, text_tokens, device, dtype)
    step = forward_fn(model, inputs, diffusers=False)
    result["baseline"] = time_steps(step, device, warmup, repeats, deadline)  # `dtype` weights
    try:
        result["linears_quantized"] = quantize_dit_(model)
        result["fp8"] = time_steps(step, device, warmup, repeats, deadline)
    except Exception as exc:  # an unsupported device (FP8 matmuls need sm89+), a missing kernel, ...
        result["fp8"] = {"error": error_text(exc)}
    if "step_s" in result["baseline"] and "step_s" in result["fp8"]:
        result["speedup"] = result["baseline"]["step_s"] / result["fp8"]["step_s"]
    del model, inputs, step
    release_memory()
    return result


def sp_worker(
    preset: str, size: VideoSize, text_tokens: int, warmup: int, repeats: int, out: Path, dtype: torch.dtype
) -> None:
    """One rank of a torchrun job: our DiT (same random weights on every rank) run by
    SequenceParallelDiT over all ranks; rank 0 writes the timing to `out` as JSON."""
    import torch.distributed as dist

    from hyv.engine.parallel import (
        SequenceParallelDiT,
        SPConfig,
        init_process_group_from_env,
        init_sequence_parallel,
    )

    device = init_process_group_from_env()
    world = dist.get_world_size()
    if device.type == "cpu":  # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        config = dit_preset(preset)
        sp = SPConfig.auto(world, config.num_heads)
        groups = init_sequence_parallel(sp, config.num_heads)
        dit = SequenceParallelDiT(build_ours(config, device, dtype), groups)
        inputs = make_inputs(config, size, text_tokens, device, dtype)
        row: dict[str, Any] = {
            "world_size": world,
            "ulysses_degree": sp.ulysses_degree,
            "ring_degree": sp.ring_degree,
            "size": size.label,
            "video_tokens": size.video_tokens(config),
            **time_steps(
                forward_fn(dit, inputs, diffusers=False), device, warmup, repeats, None, dist.barrier
            ),
        }
        if dist.get_rank() == 0:
            out.write_text(json.dumps(row, indent=2) + "\n")
        dist.barrier()
    finally:
        dist.destroy_process_group()
