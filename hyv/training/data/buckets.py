"""Training buckets: the (width, height, frames) shapes clips come in, and how many fit a batch.

The paper trains on images and clips "in aspect-ratio buckets" and "from low-resolution short clips
to higher resolutions and longer durations" (shared/seed/): every batch holds clips of one shape,
and 3D RoPE sees each position range it will be asked to draw at. A bucket is written
`WIDTHxHEIGHTxFRAMES` ("96x64x17"; frames 1 is an image). Batches are sized by a token budget, so a
128x128x33 batch costs about what a 64x64x17 one does: `batch_size_for`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SIZE_MULTIPLE = 16  # 8x VAE downsampling, then 2x2 patches
TIME_STRIDE = 4  # 4x causal temporal compression: frame counts are 4n+1
_BUCKET_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    frames: int

    def __post_init__(self) -> None:
        for side, value in (("width", self.width), ("height", self.height)):
            if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise ValueError(
                    f"bucket {self}: {side} must be a positive multiple of {SIZE_MULTIPLE}, got {value}"
                )
        if self.frames < 1 or (self.frames - 1) % TIME_STRIDE:
            raise ValueError(f"bucket {self}: frames must be 4n+1 (1, 5, 9, 17, 33, ...), got {self.frames}")

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    @property
    def aspect(self) -> float:
        """width / height."""
        return self.width / self.height

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(t, h, w) of its latents."""
        return (self.frames - 1) // TIME_STRIDE + 1, self.height // 8, self.width // 8

    @property
    def tokens(self) -> int:
        """The DiT's video tokens (2x2 patches of the latents)."""
        t, h, w = self.latent_shape
        return t * (h // 2) * (w // 2)


def parse_bucket(text: str) -> Bucket:
    """`"96x64x17"` -> Bucket(96, 64, 17); ValueError naming the text otherwise."""
    match = _BUCKET_RE.match(text)
    if not match:
        raise ValueError(f"a bucket is WIDTHxHEIGHTxFRAMES such as '96x64x17', got {text!r}")
    return Bucket(*(int(g) for g in match.groups()))


def parse_buckets(texts: str | Iterable[str]) -> tuple[Bucket, ...]:
    """A comma-separated string or a list of bucket strings -> buckets, in order, without repeats."""
    items = texts.split(",") if isinstance(texts, str) else list(texts)
    buckets = tuple(dict.fromkeys(parse_bucket(str(item)) for item in items if str(item).strip()))
    if not buckets:
        raise ValueError(f"no buckets given in {texts!r}")
    return buckets


def grid(sizes: Iterable[tuple[int, int]], frame_counts: Iterable[int]) -> tuple[Bucket, ...]:
    """Every (width, height) with every frame count."""
    counts = list(frame_counts)
    return tuple(Bucket(w, h, f) for w, h in sizes for f in counts)


def batch_size_for(bucket: Bucket, token_budget: int, max_batch: int) -> int:
    """Clips of `bucket` in a batch of about `token_budget` DiT tokens, within [1, max_batch]."""
    return max(1, min(max_batch, token_budget // bucket.tokens))


def pick_bucket(
    buckets: tuple[Bucket, ...],
    image_fraction: float,
    seed: int,
    step: int,
    balance: float = 0.0,
    batch_size: int = 1,
    token_budget: int = 0,
) -> Bucket:
    """The bucket of global step `step` (the same on every rank): images with probability
    `image_fraction` (the coin base training always drew), else a video bucket.

    With `balance` 0 every bucket of the group (images or videos) is drawn equally often. A token
    budget gives a large bucket fewer clips per batch (128x128x33: 1 where 64x64x17 gets 8), so
    equal draws give it a fraction of the clips; `balance` b draws each bucket in proportion to
    (batch_size / its clips per batch) ** b: 1 gives every bucket of the group as many clips, 0.5
    sits halfway (in log)."""
    videos = [b for b in buckets if not b.is_image]
    images = [b for b in buckets if b.is_image]
    coin = np.random.default_rng([seed, step, 0, 2]).random()
    group = images if images and (not videos or coin < image_fraction) else videos
    if len(group) == 1:
        return group[0]
    rng = np.random.default_rng([seed, step, 0, 3])
    weights = np.array([(batch_size / clips_per_batch(b, batch_size, token_budget)) ** balance for b in group])
    if np.ptp(weights) > 0:  # balance 0 makes every weight 1
        return group[int(rng.choice(len(group), p=weights / weights.sum()))]
    return group[int(rng.integers(len(group)))]  # equal weights: the uniform draw, step for step


def clips_per_batch(bucket: Bucket, batch_size: int, token_budget: int) -> int:
    """`batch_size`, or with a token budget the clips of `bucket` that fit it (at most batch_size)."""
    return batch_size_for(bucket, token_budget, batch_size) if token_budget > 0 else batch_size
