"""Where training batches come from: a pure function of (step, rank), so a resumed run sees exactly
the batches the interrupted one would have seen.

`SyntheticBatches` draws from `hyv.training.data.dataset.SyntheticVideoDataset` (the synthetic caption
grammar): per step one bucket (hyv.training.data.buckets.pick_bucket: images with probability
`image_fraction`, else one of the video buckets), then `batch_size` indices (or as many as fit the
`token_budget`) of that bucket's dataset; with `continuation_fraction`, that share of the video
steps draws continuation clips instead, trained image-to-video. One dataset per bucket keeps every
batch one shape without any bucketing state.
`FixedBatch` repeats one batch (overfitting checks, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from hyv.training.data.buckets import Bucket, clips_per_batch, pick_bucket
from hyv.training.dit.config import DiTTrainConfig


@dataclass(frozen=True)
class TrainBatch:
    """Clips in pixels, or (with a latent cache) their VAE posterior moments instead."""

    video: torch.Tensor | None  # (B, 3, T, H, W) in [-1, 1]; T = 1 for images
    captions: list[str]
    moments: torch.Tensor | None = None  # (B, 2C, t, h, w): posterior mean and logvar, unscaled
    image_conditioned: bool = False  # every clip trains image-to-video (continuations)

    def __post_init__(self) -> None:
        if (self.video is None) == (self.moments is None):
            raise ValueError("a TrainBatch holds exactly one of video or moments")
        if self.video is not None and (self.video.ndim != 5 or self.video.shape[1] != 3):
            raise ValueError(f"video batch must be (B, 3, T, H, W), got {tuple(self.video.shape)}")
        if self.moments is not None and self.moments.ndim != 5:
            raise ValueError(f"moments must be (B, 2C, t, h, w), got {tuple(self.moments.shape)}")
        rows = (self.video if self.video is not None else self.moments).shape[0]  # type: ignore[union-attr]
        if len(self.captions) != rows:
            raise ValueError(f"{len(self.captions)} captions for a batch of {rows} clips")


class BatchSource(Protocol):
    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        """The batch of global step `step` on process `rank`; the same arguments give the same batch."""
        ...


def step_rng(seed: int, step: int, rank: int, stream: int = 0) -> np.random.Generator:
    """An independent generator per (seed, step, rank, stream)."""
    return np.random.default_rng([seed, step, rank, stream])


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A 63-bit torch seed per (seed, step, rank, stream)."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint64)[0] >> 1)


def continuation_step(config: DiTTrainConfig, bucket: Bucket, step: int, rank: int) -> bool:
    """Whether step `step` trains on continuation clips (a video bucket's, with probability
    `continuation_fraction`); its own stream, so the other draws do not change with the fraction."""
    if bucket.is_image or config.continuation_fraction <= 0:
        return False
    return bool(step_rng(config.seed, step, rank, stream=2).random() < config.continuation_fraction)


class FixedBatch:
    """The same batch at every step."""

    def __init__(self, video: torch.Tensor, captions: Sequence[str]) -> None:
        self._batch = TrainBatch(video, list(captions))

    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        return self._batch


class SyntheticBatches:
    """Batches rendered from the synthetic dataset's train split, one bucket per step."""

    def __init__(self, config: DiTTrainConfig, datasets: dict[Bucket, Any] | None = None) -> None:
        from hyv.training.dit.latents import bucket_dataset

        self.config = config
        self.buckets = config.train_buckets()
        if datasets is None:
            datasets = {bucket: bucket_dataset(config, bucket) for bucket in self.buckets}
        self.datasets = datasets
        videos = [b for b in self.buckets if not b.is_image]
        self.continuations = {b: bucket_dataset(config, b, continuations=True) for b in videos}

    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        # The bucket is shared by all ranks (equal work per rank under DDP); the clips are not.
        c = self.config
        bucket = pick_bucket(
            self.buckets, c.image_fraction, c.seed, step, c.bucket_balance, c.batch_size, c.token_budget
        )
        rng = step_rng(c.seed, step, rank, stream=1)
        continuing = continuation_step(c, bucket, step, rank)
        dataset = self.continuations[bucket] if continuing else self.datasets[bucket]
        indices = rng.integers(0, len(dataset), size=clips_per_batch(bucket, c.batch_size, c.token_budget))
        samples = [dataset[int(i)] for i in indices]
        video = torch.stack([s["video"].float() for s in samples])
        return TrainBatch(video, [str(s["caption"]) for s in samples], image_conditioned=continuing)
