"""Batched generation for the evaluation, with exactly the pipeline's sampling settings.

`VideoPipeline.generate` makes one clip per call and decides between embedded guidance and true
CFG by the DiT alone (``guidance_embed``). The eval needs many clips and a teacher sampled with
true CFG even when its DiT has a (frozen) guidance embedding, so it runs the pipeline's own
pieces (text encoder, DiT, `euler_denoise`, `cfg_combine`, VAE) on batches here:

* `served_sampler`: what ``hyv generate`` does by default (distilled schedule from the DiT
  metadata or ``limits.steps`` steps of the shifted flow schedule; embedded guidance for a
  guidance-embedding DiT, true CFG otherwise).
* `teacher_sampler`: ``steps`` steps with true CFG at a given scale; a guidance embedding gets
  ``TEACHER_EMBEDDED_GUIDANCE`` in both branches (what base training fed it).

Each clip's noise is drawn on the CPU from its own seed exactly as the pipeline draws it, and the
VAE decodes with the pipeline's tiling, so clip i equals the pipeline's frames for that prompt,
seed and settings (within float rounding of the batched matmuls; before H.264), which
tests/training/test_eval_runner.py checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyv.engine.limits import TIME_STRIDE
from hyv.engine.pipeline import VideoPipeline, pin_first_frame
from hyv.engine.request import GenerationRequest
from hyv.engine.sampling import cfg_combine, euler_denoise, flow_schedule
from hyv.engine.video_io import video_to_uint8
from hyv.models import TextEmbeddings, from_dit_latents, to_dit_latents
from hyv.training.data.dataset import to_tensor

TEACHER_EMBEDDED_GUIDANCE = 1.0  # what base training feeds a (frozen) guidance embedding


@dataclass(frozen=True)
class SamplerSettings:
    """How one model is sampled; recorded in eval.json.

    mode: "true_cfg" (negative and prompt as one batch of two, combined with scale ``guidance``),
    "embedded" (one forward, ``guidance`` x 1000 to the guidance embedding) or "conditional"
    (one forward, no guidance). ``embedded_guidance``: what a guidance embedding gets under true CFG.
    """

    sigmas: tuple[float, ...]
    mode: str
    guidance: float
    flow_shift: float
    negative_prompt: str = ""
    embedded_guidance: float | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sigmas": list(self.sigmas), "steps": self.steps}


def served_sampler(
    pipeline: VideoPipeline, size: int, frames: int, height: int | None = None
) -> SamplerSettings:
    """The pipeline's own defaults for ``size`` (width) x ``height`` (default: square) and
    ``frames`` (what `hyv generate` does); ValueError for a size the bundle does not serve."""
    height = height or size
    request = GenerationRequest(prompt="eval", width=size, height=height, num_frames=frames, seed=0)
    plan = pipeline.plan(request)
    sigmas = pipeline.schedule or flow_schedule(plan.steps, plan.flow_shift).tolist()
    embed = pipeline.dit.config.guidance_embed
    mode = "embedded" if embed else ("true_cfg" if plan.guidance != 1.0 else "conditional")
    return SamplerSettings(tuple(float(s) for s in sigmas), mode, plan.guidance, plan.flow_shift)


def teacher_sampler(
    pipeline: VideoPipeline,
    size: int,
    frames: int,
    steps: int,
    guidance: float | None,
    negative_prompt: str,
    height: int | None = None,
) -> SamplerSettings:
    """``steps`` steps of the teacher's flow schedule with true CFG (see the module docstring), at
    ``size`` (width) x ``height`` (default: square)."""
    request = GenerationRequest(
        prompt="eval", width=size, height=height or size, num_frames=frames, steps=steps, guidance=guidance,
        seed=0,
    )  # fmt: skip
    plan = pipeline.plan(request)
    sigmas = flow_schedule(plan.steps, plan.flow_shift).tolist()
    embedded = TEACHER_EMBEDDED_GUIDANCE if pipeline.dit.config.guidance_embed else None
    return SamplerSettings(
        tuple(sigmas), "true_cfg", plan.guidance, plan.flow_shift, negative_prompt, embedded
    )


def _velocity(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    cond: TextEmbeddings,
    uncond: TextEmbeddings | None,
    image_cond: torch.Tensor | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    dit, device, dtype = pipeline.dit, pipeline.device, pipeline.options.dtype
    batch = cond.states.shape[0]

    def with_image(x: torch.Tensor) -> torch.Tensor:
        if image_cond is None:
            return x
        return torch.cat([x, image_cond.repeat(x.shape[0] // batch, 1, 1, 1, 1)], dim=1)

    if uncond is None:
        guidance = None
        if dit.config.guidance_embed:
            guidance = torch.full((batch,), sampler.guidance * 1000.0, device=device, dtype=dtype)
        return lambda x, t: dit(with_image(x), t, cond.states, cond.mask, cond.pooled, guidance)

    states = torch.cat([uncond.states, cond.states])
    mask = torch.cat([uncond.mask, cond.mask])
    pooled = torch.cat([uncond.pooled, cond.pooled])
    embedded = None
    if dit.config.guidance_embed:
        value = TEACHER_EMBEDDED_GUIDANCE if sampler.embedded_guidance is None else sampler.embedded_guidance
        value *= 1000.0
        embedded = torch.full((2 * batch,), value, device=device, dtype=dtype)

    def cfg_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_uncond, v_cond = dit(
            with_image(torch.cat([x, x])), torch.cat([t, t]), states, mask, pooled, embedded
        ).chunk(2)
        return cfg_combine(v_uncond, v_cond, sampler.guidance)

    return cfg_velocity


def generate_batch(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: int,
    frames: int,
    images: Sequence[np.ndarray] | None = None,
    start: torch.Tensor | None = None,
    height: int | None = None,
) -> list[np.ndarray]:
    """One batch of clips ``size`` (width) x ``height`` (default: square), uint8 (T, H, W, 3)
    each; ``images`` (H, W, 3) uint8 make it I2V.

    ``start``: (B, C, t, h, w) latents at ``sampler.sigmas[0]`` to integrate from instead of the
    seeds' pure noise (a partly noised clip: `hyv.training.eval.retention`)."""
    dit, vae, encoder = pipeline.dit, pipeline.vae, pipeline.text_encoder
    assert encoder is not None  # VideoPipeline refuses a bundle without one
    n_images = len(prompts) if images is None else len(images)
    if len(seeds) != len(prompts) or n_images != len(prompts):
        raise ValueError(f"need one seed (and image) per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    device, dtype = pipeline.device, pipeline.options.dtype
    b, channels = len(prompts), dit.config.latent_channels
    latent_frames = (frames - 1) // TIME_STRIDE + 1
    shape = (1, channels, latent_frames, (height or size) // 8, size // 8)
    with torch.inference_mode():
        true_cfg = sampler.mode == "true_cfg"
        texts = [sampler.negative_prompt] * b + list(prompts) if true_cfg else list(prompts)
        encoded = encoder.encode(texts).to(device, dtype)
        cond = TextEmbeddings(encoded.states[-b:], encoded.mask[-b:], encoded.pooled[-b:])
        uncond = (
            TextEmbeddings(encoded.states[:b], encoded.mask[:b], encoded.pooled[:b]) if true_cfg else None
        )
        image_cond = None
        if dit.config.image_condition is not None:
            image_cond = torch.zeros(b, channels + 1, *shape[2:], device=device, dtype=dtype)
            if images is not None:
                video = torch.stack([to_tensor(np.asarray(im)[None]) for im in images])  # (B, 3, 1, H, W)
                vae_device = next(vae.parameters()).device
                latent = vae.encode(video.to(vae_device, dtype), tiled=False).mode()
                image_cond[:, :channels, :1] = to_dit_latents(latent, vae.config).to(device, dtype)
                image_cond[:, channels:, :1] = 1.0
        elif images is not None:
            raise ValueError("this model is text-to-video only: it cannot take an input image")
        if start is not None:
            noise = start.to(device, dtype)
        else:
            noise = torch.cat(
                [
                    torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
                    for s in seeds
                ]
            ).to(device, dtype)
        velocity = _velocity(pipeline, sampler, cond, uncond, image_cond)
        latents = euler_denoise(velocity, noise, torch.tensor(sampler.sigmas, dtype=torch.float64))
        if images is not None:
            pin_first_frame(latents, image_cond)
        vae_device = next(vae.parameters()).device
        z = from_dit_latents(latents.float(), vae.config).to(vae_device, dtype)
        video = vae.decode(z, tiled=None, tiling=pipeline.vae_tiling)
        return [video_to_uint8(v) for v in video.float()]


def batches(n: int, size: int) -> Iterator[range]:
    """Consecutive index ranges of at most ``size``."""
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def generate_clips(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    size: int,
    frames: int,
    batch_size: int,
    images: Sequence[np.ndarray] | None = None,
    bar: Any = None,
    label: str = "generate",
    height: int | None = None,
) -> list[np.ndarray]:
    """All clips (``size`` wide, ``height`` high; default square) in batches of ``batch_size``,
    advancing a rich progress ``bar`` if given."""
    task = bar.add_task(label, total=len(prompts)) if bar is not None else None
    out: list[np.ndarray] = []
    for idx in batches(len(prompts), batch_size):
        out += generate_batch(
            pipeline,
            sampler,
            [prompts[i] for i in idx],
            [seeds[i] for i in idx],
            size,
            frames,
            None if images is None else [images[i] for i in idx],
            height=height,
        )
        if bar is not None:
            bar.update(task, advance=len(idx))
    return out
