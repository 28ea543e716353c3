"""Attribute retention by noise level: where along the trajectory a model loses (or finds) an attribute.

The held-out evaluation samples from pure noise, so a wrong shape there does not say at which
noise level the model failed. `retention_curve` starts instead from the held-out ground-truth
clips, noised to level ``s`` (the posterior mode in the DiT's latent space, ``(1 - s) x0 + s
noise``, the noise from each clip's eval seed), integrates the model's flow from ``s`` to 0 on
its own schedule (the sigmas below ``s`` of ``steps`` teacher steps, true CFG at ``guidance``)
and judges the result. At small ``s`` the clip is still visible, so the accuracy says whether the
model keeps an attribute it is shown; ``s = 1`` is plain generation. A model that is accurate
at 0.2 but not at 0.4 loses the attribute in the mid noise levels (SDEdit's observation, turned
into a probe).

`hyv train retention` writes ``retention.json`` and ``retention.png`` (accuracy vs ``s``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyv.engine.limits import TIME_STRIDE
from hyv.engine.pipeline import VideoPipeline
from hyv.models import to_dit_latents
from hyv.training.data import render_clip
from hyv.training.data.dataset import to_tensor
from hyv.training.eval.runner import EvalItem, heldout_items, judge_clips, open_bundle
from hyv.training.eval.sampling import SamplerSettings, batches, generate_batch, teacher_sampler

logger = logging.getLogger(__name__)

RETENTION_FILE = "retention.json"
RETENTION_PLOT = "retention.png"
PLOTTED = ("color", "shape", "motion", "all")


@dataclass(frozen=True)
class RetentionConfig:
    bundle: Path
    out_dir: Path = Path("runs/retention")
    sigmas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    steps: int = 30  # of the full 1 -> 0 schedule; a start at s keeps the ones below s
    guidance: float | None = None  # true CFG scale; None: the bundle's default
    size: int = 64
    num_frames: int = 17
    combinations: int | None = None  # None: all 44 held-out combinations
    seed: int = 0
    batch_size: int = 16
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if not self.sigmas or not all(0.0 < s <= 1.0 for s in self.sigmas):
            raise ValueError(f"sigmas must be noise levels in (0, 1], got {self.sigmas}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if (self.num_frames - 1) % TIME_STRIDE:
            raise ValueError(f"num_frames must be 4n+1, got {self.num_frames}")


def clean_latents_and_noise(
    pipeline: VideoPipeline, truth: Sequence[np.ndarray], items: Sequence[EvalItem]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, t, h, w) twice: the clips' posterior modes in the DiT's space, and each clip's noise."""
    vae = pipeline.vae
    device, dtype = next(vae.parameters()).device, pipeline.options.dtype
    clean, noise = [], []
    with torch.inference_mode():
        for clip, item in zip(truth, items, strict=True):
            video = to_tensor(clip)[None].to(device, dtype)  # (1, 3, T, H, W)
            x0 = to_dit_latents(vae.encode(video, tiled=False).mode().float(), vae.config)
            generator = torch.Generator().manual_seed(item.noise_seed)
            noise.append(torch.randn(x0.shape, generator=generator, dtype=torch.float32))
            clean.append(x0.cpu())
    return torch.cat(clean), torch.cat(noise)


def noised_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow-matching interpolant at ``sigma``: ``(1 - sigma) x0 + sigma noise``."""
    return (1.0 - sigma) * x0 + sigma * noise


def retention_curve(
    pipeline: VideoPipeline,
    items: Sequence[EvalItem],
    truth: Sequence[np.ndarray],
    config: RetentionConfig,
    full: SamplerSettings,
) -> list[dict[str, Any]]:
    """One entry per sigma: {"sigma", "steps", "accuracy", "clips", "wall_s"} (see the module doc).

    ``full`` is the teacher's sampler over the whole 1 -> 0 schedule; a start at ``s`` keeps its
    sigmas below ``s``.
    """
    x0, noise = clean_latents_and_noise(pipeline, truth, items)
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    curve = []
    for sigma in config.sigmas:
        start_time = time.perf_counter()
        below = tuple(s for s in full.sigmas if s < sigma)
        sampler = dataclasses.replace(full, sigmas=(sigma, *below))
        start = noised_latents(x0, noise, sigma)
        clips: list[np.ndarray] = []
        for idx in batches(len(items), config.batch_size):
            clips += generate_batch(
                pipeline,
                sampler,
                [prompts[i] for i in idx],
                [seeds[i] for i in idx],
                config.size,
                config.num_frames,
                start=start[idx.start : idx.stop],
            )
        judged = judge_clips(clips, items)
        entry = {
            "sigma": sigma,
            "steps": sampler.steps,
            "accuracy": judged["accuracy"],
            "clips": judged["clips"],
            "wall_s": time.perf_counter() - start_time,
        }
        logger.info("retention at sigma %.2f: %s", sigma, {k: entry["accuracy"][k] for k in PLOTTED})
        curve.append(entry)
    return curve


def save_retention_plot(curve: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = [entry["sigma"] for entry in curve]
    for name in PLOTTED:
        ax.plot(x, [100.0 * entry["accuracy"][name] for entry in curve], marker="o", label=name)
    ax.set_xlabel("start noise level s (1 = generation from pure noise)")
    ax.set_ylabel("judge accuracy on held-out clips (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_retention(config: RetentionConfig) -> dict[str, Any]:
    """Measure the curve for ``config.bundle``; write retention.json and retention.png."""
    pipeline = open_bundle(config.bundle, "bundle", config.device, config.dtype)
    items = heldout_items(config.combinations, 1, config.seed)
    truth = [render_clip(it.spec, config.num_frames, config.size) for it in items]
    full = teacher_sampler(pipeline, config.size, config.num_frames, config.steps, config.guidance, "")
    curve = retention_curve(pipeline, items, truth, config, full)
    results = {
        "bundle": str(config.bundle),
        "settings": {
            **dataclasses.asdict(config),
            "bundle": str(config.bundle),
            "out_dir": str(config.out_dir),
        },
        "guidance": full.guidance,
        "n_clips": len(items),
        "curve": curve,
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / RETENTION_FILE).write_text(json.dumps(results, indent=2) + "\n")
    title = f"{config.bundle} - true CFG {results['guidance']:g}, {config.steps}-step schedule"
    save_retention_plot(curve, config.out_dir / RETENTION_PLOT, title)
    return results
