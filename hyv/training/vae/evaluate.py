"""After VAE training: the latent scaling factor, PSNR/SSIM on held-out clips, a reconstruction PNG.

* Scaling factor: 1 / std of the posterior *mode* over a sample of training clips, so that the
  DiT's latents (``z * scaling_factor``) have unit variance (SD / HunyuanVideo do the same).
* PSNR / SSIM (`hyv.training.eval.metrics`, on uint8 frames) of posterior-mode reconstructions of
  held-out clips (`SyntheticVideoDataset("heldout")`: attribute combinations never trained on),
  untiled and with the training tiles (tiles smaller than the clip, so seams would show).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyv.models import CausalVAE3D
from hyv.models.vae_config import VAETiling
from hyv.training.data.dataset import SyntheticVideoDataset, to_uint8
from hyv.training.eval.metrics import psnr, ssim

EVAL_BATCH = 4


@torch.no_grad()
def reconstruct(vae: CausalVAE3D, video: torch.Tensor, tiling: VAETiling | None) -> torch.Tensor:
    """Posterior-mode reconstruction; tiled with `tiling` when given, else in one pass."""
    tiled = tiling is not None
    z = vae.encode(video, tiled=tiled, tiling=tiling).mode()
    return vae.decode(z, tiled=tiled, tiling=tiling).clamp(-1.0, 1.0)


@torch.no_grad()
def scaling_factor(vae: CausalVAE3D, videos: list[torch.Tensor]) -> float:
    """1 / std of the posterior mode over `videos` (each (B, 3, T, H, W))."""
    values = [
        vae.encode(v.to(next(vae.parameters()).device), tiled=False).mode().float().flatten() for v in videos
    ]
    std = float(torch.cat(values).std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"latent std is {std}: cannot compute a scaling factor")
    return 1.0 / std


def heldout_videos(count: int, frames: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """`count` held-out clips (videos only), in batches of up to EVAL_BATCH: each (b, 3, T, H, W)."""
    dataset = SyntheticVideoDataset("heldout", num_frames=frames, size=size, image_fraction=0.0, seed=seed)
    dataset.length = max(dataset.length, count)
    items = [dataset[i]["video"] for i in range(count)]
    return [torch.stack(items[i : i + EVAL_BATCH]) for i in range(0, count, EVAL_BATCH)]


@torch.no_grad()
def evaluate_vae(
    vae: CausalVAE3D, videos: list[torch.Tensor], tiling: VAETiling | None = None
) -> dict[str, Any]:
    """Mean PSNR / SSIM (uint8 frames) of reconstructions, untiled and, with `tiling`, tiled."""
    device = next(vae.parameters()).device
    modes: dict[str, VAETiling | None] = {"untiled": None}
    if tiling is not None:
        modes["tiled"] = tiling
    result: dict[str, Any] = {"clips": sum(v.shape[0] for v in videos)}
    for name, mode in modes.items():
        psnrs, ssims = [], []
        for batch in videos:
            recon = reconstruct(vae, batch.to(device), mode).cpu()
            for original, rebuilt in zip(batch, recon, strict=True):
                a, b = to_uint8(original), to_uint8(rebuilt)
                psnrs.append(psnr(a, b))
                ssims.append(ssim(a, b))
        result[name] = {
            "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "psnr_min": float(np.min(psnrs)),
        }
    return result


@torch.no_grad()
def save_reconstructions(
    vae: CausalVAE3D, video: torch.Tensor, path: Path, tiling: VAETiling | None, frames: int = 4
) -> Path:
    """A PNG: per clip, a row of `frames` evenly spaced frames: original | untiled | tiled."""
    from PIL import Image

    device = next(vae.parameters()).device
    recons = [reconstruct(vae, video.to(device), None).cpu()]
    if tiling is not None:
        recons.append(reconstruct(vae, video.to(device), tiling).cpu())
    picks = np.linspace(0, video.shape[2] - 1, min(frames, video.shape[2])).round().astype(int)
    rows = []
    for index in range(video.shape[0]):
        panels = [to_uint8(v[index])[picks] for v in (video, *recons)]  # each (F, H, W, 3)
        gap = np.full((video.shape[3], 4, 3), 255, dtype=np.uint8)
        row = [np.concatenate([*panel, gap], axis=1) for panel in panels]  # (H, F*W + 4, 3) each
        rows.append(np.concatenate(row, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path
