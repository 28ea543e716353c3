"""VAE training batches: the curriculum phase of a step and its clips, a pure function of (seed, step).

A video batch renders each clip at "native" frame times and keeps every k-th frame, k uniform in
1..`max_frame_interval` (one k per batch): the native rate is fixed so that `num_frames` frames at
the largest interval span the whole motion of a dataset clip (what the DiT trains on), and smaller
intervals show slower motion, starting at a random time. Images are the first frame of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hyv.training.data.dataset import SyntheticVideoDataset, to_tensor
from hyv.training.data.grammar import BACKGROUND_RGB, COLOR_RGB, ClipSpec
from hyv.training.data.render import coverage, render_clip
from hyv.training.vae.config import VAETrainConfig


@dataclass(frozen=True)
class Phase:
    """What one step trains on."""

    name: str  # "images" | "low_res" | "crop" | "full" | "tiling"
    size: int
    frames: int
    batch_size: int
    tiled: bool  # encode/decode this batch with the config's small tiles
    rendered: int  # the size its clips were rendered at (`size` is the crop's)


@dataclass(frozen=True)
class VAEBatch:
    video: torch.Tensor  # (B, 3, T, H, W) in [-1, 1]
    phase: Phase
    interval: int  # frame interval (0 for images)


def phase_name(config: VAETrainConfig, step: int) -> str:
    """The curriculum phase of 0-based `step`: images, low_res, crop, full or tiling."""
    images_end = round(config.image_phase_fraction * config.steps)
    if step < images_end:
        return "images"
    low_res_end = images_end + round(config.low_res_fraction * config.steps)
    if step < low_res_end:
        return "low_res"
    if step < low_res_end + round(config.crop_fraction * config.steps):
        return "crop"
    if step >= config.steps - round(config.tiling_fraction * config.steps):
        return "tiling"
    return "full"


def render_times(spec: ClipSpec, times: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of `spec` at clip times `times` (same drawing as render_clip)."""
    bg = np.asarray(BACKGROUND_RGB[spec.background], dtype=np.float32)
    fg = np.asarray(COLOR_RGB[spec.color], dtype=np.float32)
    out = np.empty((len(times), size, size, 3), dtype=np.uint8)
    for k, t in enumerate(times):
        alpha = coverage(spec, float(t), size)[..., None]
        out[k] = np.rint(bg + alpha * (fg - bg)).astype(np.uint8)
    return out


def frame_times(frames: int, interval: int, native_dt: float, start: float) -> np.ndarray:
    """Clip times of `frames` frames taken every `interval` native frames (native_dt apart).

    `start` in [0, 1] places the window within the clip: 0 at its beginning, 1 at its end."""
    span = min(1.0, (frames - 1) * interval * native_dt)
    return start * (1.0 - span) + np.linspace(0.0, span, frames)


class VAEBatches:
    """`batch(step)`: the step's phase and clips, identical on every call and after a resume."""

    def __init__(self, config: VAETrainConfig) -> None:
        self.config = config
        # Only its (seeded, train-split) clip specs are used; clips are rendered here.
        self.dataset = SyntheticVideoDataset("train", num_frames=1, size=8, length=config.dataset_length)
        # Clip time between native frames: the final clip at the largest interval spans [0, 1].
        self.native_dt = 1.0 / max(1, (config.num_frames - 1) * config.max_frame_interval)

    def video(self, index: int, frames: int, size: int) -> torch.Tensor:
        """Train clip `index` as the dataset renders it (whole motion): (3, T, H, W)."""
        return to_tensor(render_clip(self.dataset.spec(index), frames, size))

    def batch(self, step: int) -> VAEBatch:
        c = self.config
        rng = np.random.default_rng([c.seed, step, 7])
        name = phase_name(c, step)
        low = name == "low_res"
        size = c.low_res_size if low else c.size  # rendered size
        if name == "crop" and c.crop_render_sizes:
            size = int(c.crop_render_sizes[int(rng.integers(len(c.crop_render_sizes)))])
        crop = c.crop_size if name in ("crop", "images") else size
        frames = c.low_res_frames if low else c.num_frames
        small = c.low_res_batch_size  # low_res and crop batches; full and tiling take batch_size
        batch_size = {"images": c.image_batch_size, "low_res": small, "crop": small}.get(name, c.batch_size)
        is_image = name == "images" or bool(rng.random() < c.image_fraction) or frames == 1
        tiled = name == "tiling" and not is_image and bool(rng.random() < c.tiling_probability)
        interval = 0 if is_image else int(rng.integers(1, c.max_frame_interval + 1))
        clips = []
        for _ in range(batch_size):
            spec = self.dataset.spec(int(rng.integers(len(self.dataset))))
            if is_image:
                times = np.array([rng.uniform(0.0, 1.0)])
            else:
                times = frame_times(frames, interval, self.native_dt, float(rng.uniform(0.0, 1.0)))
            top, left = (int(v) for v in rng.integers(0, size - crop + 1, size=2))
            frames_hw = render_times(spec, times, size)[:, top : top + crop, left : left + crop]
            clips.append(to_tensor(frames_hw))  # (3, T, crop, crop)
        phase = Phase(name, crop, 1 if is_image else frames, batch_size, tiled, size)
        return VAEBatch(torch.stack(clips), phase, interval)  # (B, 3, T, H, W)
