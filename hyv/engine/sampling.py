"""Flow-matching sampling: the schedule and the Euler denoise loop, as small pure functions.

HunyuanVideo's convention: x_t = (1 - sigma) * x_0 + sigma * noise, the model predicts the
velocity noise - x_0, sigma runs from 1 (noise) to 0 (data), and the model sees
timestep = sigma * 1000. `flow_shift` bends the schedule towards high noise, where large
videos need more steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """HunyuanVideo's timestep shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    if shift <= 0:
        raise ValueError(f"flow_shift must be positive, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_schedule(num_steps: int, shift: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """num_steps + 1 sigmas from 1 down to 0 (float64 for exact, reproducible steps)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)
    return shift_sigmas(sigmas, shift)


def edit_schedule(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """SDEdit: the tail of `sigmas` from the first sigma at or below `strength` (at least one step),
    so a distilled student's fixed schedule is entered only at sigmas it was trained on."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    start = int(torch.nonzero(sigmas <= strength + 1e-9)[0]) if bool((sigmas <= strength + 1e-9).any()) else 0
    return sigmas[min(start, len(sigmas) - 2) :]


def noise_to(clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_sigma = (1 - sigma) * x_0 + sigma * noise: a clean latent moved onto the flow at `sigma`."""
    return ((1.0 - sigma) * clean.double() + sigma * noise.double()).to(clean.dtype)


def euler_denoise(
    velocity: VelocityFn,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow from sigmas[0] to sigmas[-1] with Euler steps.

    velocity(latents, timestep [B]) -> predicted velocity shaped like latents.
    """
    batch = latents.shape[0]
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        timestep = torch.full((batch,), float(sigma) * 1000.0, device=latents.device, dtype=latents.dtype)
        v = velocity(latents, timestep)
        latents = (latents.double() + (sigma_next - sigma) * v.double()).to(latents.dtype)
        if on_step is not None:
            on_step(i + 1, total)
    return latents


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_uncond + scale * (v_cond - v_uncond)."""
    return v_uncond + scale * (v_cond - v_uncond)
