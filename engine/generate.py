"""Text-to-video with a model bundle: encode the prompt, denoise, decode, encode the MP4.

This is the plain single-process path; the engine issue grows it into the warm pipeline with
I2V, streaming and sequence parallelism.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.bundle import ModelBundle
from engine.sampling import euler_denoise, flow_schedule
from engine.video_io import encode_mp4, video_to_uint8

logger = logging.getLogger(__name__)

VAE_TIME_STRIDE = 4
VAE_SPACE_STRIDE = 8
PATCH = 2


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    flow_shift: float | None = None
    fps: int | None = None
    seed: int = 0


@dataclass
class GenerationResult:
    mp4: bytes
    width: int
    height: int
    num_frames: int
    fps: int
    timings: dict[str, float] = field(default_factory=dict)


def _check_size(width: int, height: int, num_frames: int, bundle: ModelBundle) -> None:
    limits = bundle.spec.defaults
    multiple = VAE_SPACE_STRIDE * PATCH
    for name, value, limit in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value % multiple or not 0 < value <= limit:
            raise ValueError(f"{name} must be a multiple of {multiple} in [{multiple}, {limit}], got {value}")
    if (num_frames - 1) % VAE_TIME_STRIDE or not 1 <= num_frames <= limits.max_frames:
        raise ValueError(f"num_frames must be 4n+1 in [1, {limits.max_frames}], got {num_frames}")


@torch.no_grad()
def generate_video(
    bundle: ModelBundle,
    request: GenerationRequest,
    on_step: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    defaults = bundle.spec.defaults
    width = request.width or defaults.width
    height = request.height or defaults.height
    num_frames = request.num_frames or defaults.num_frames
    fps = request.fps or defaults.fps
    _check_size(width, height, num_frames, bundle)
    device = next(bundle.dit.parameters()).device
    dtype = next(bundle.dit.parameters()).dtype
    timings: dict[str, float] = {}

    start = time.perf_counter()
    states, mask, pooled = bundle.text_encoder.encode([request.prompt])
    states, pooled = states.to(device, dtype), pooled.to(device, dtype)
    mask = mask.to(device)
    timings["text_encode"] = time.perf_counter() - start

    start = time.perf_counter()
    config = bundle.dit.config
    latent_shape = (
        1,
        config.out_channels,
        (num_frames - 1) // VAE_TIME_STRIDE + 1,
        height // VAE_SPACE_STRIDE,
        width // VAE_SPACE_STRIDE,
    )  # (B, C, T, H, W)
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    noise = torch.randn(latent_shape, generator=generator).to(device, dtype)
    guidance = request.guidance if request.guidance is not None else defaults.guidance
    guidance_tensor = torch.full((1,), guidance * 1000.0, device=device, dtype=dtype)
    image_cond = None
    if config.in_channels > config.out_channels:
        # The latent_concat model without an image: zero image latent and zero mask means T2V.
        image_cond = torch.zeros(
            (1, config.in_channels - config.out_channels, *latent_shape[2:]), device=device, dtype=dtype
        )

    def velocity(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_in = latents if image_cond is None else torch.cat([latents, image_cond], dim=1)
        return bundle.dit(
            model_in,
            timestep,
            states,
            mask,
            pooled,
            guidance_tensor if config.guidance_embed else None,
        )

    sigmas = flow_schedule(request.steps or defaults.steps, request.flow_shift or defaults.flow_shift)
    latents = euler_denoise(velocity, noise, sigmas, on_step)
    timings["denoise"] = time.perf_counter() - start

    start = time.perf_counter()
    video = bundle.vae.decode(latents / bundle.vae.config.scaling_factor)  # (1, 3, T, H, W)
    timings["decode"] = time.perf_counter() - start

    start = time.perf_counter()
    mp4 = encode_mp4(video_to_uint8(video[0]), fps)
    timings["encode"] = time.perf_counter() - start
    logger.info("generated %dx%dx%d in %s", width, height, num_frames, timings)
    return GenerationResult(mp4, width, height, num_frames, fps, timings)
