"""A latent cache: the frozen VAE encodes a fixed set of training clips once, not at every step.

On the CPU the encoder costs more than the DiT's own forward and backward (a batch of eight 64x64x17
clips: ~0.55 s to encode against ~0.2 s for the small DiT's step), and the VAE is frozen during DiT
training, so encoding every clip at every step is wasted work. `build_latent_cache` encodes the first
`cache_videos` items of each video bucket and `cache_images` of each image bucket of the synthetic
train split (hyv.training.data.buckets) and stores their posterior moments (mean and log-variance,
fp16, unscaled); `CachedLatentBatches` then draws batches from them. The posterior is still
*sampled* at every step (a fresh draw of noise per step), as it would be with the encoder in the
loop; what is lost is only the clip variety beyond the cached set.

With `cache_continuations` > 0 it also holds that many continuation clips per video bucket
(hyv/training/data/dataset.py), which `CachedLatentBatches` draws for `continuation_fraction` of
the video steps, as image-to-video batches.

The cache is built in chunks and saved after each, so an interrupted build resumes, and a larger
count extends it; its key (VAE encoder digest, buckets, seed, dataset length, the data's
`DATA_VERSION`) must match or it is rebuilt, and the continuation clips are re-encoded when their
start times differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hyv.models import CausalVAE3D
from hyv.training.config_io import TrainConfig
from hyv.training.data.buckets import Bucket, clips_per_batch, pick_bucket
from hyv.training.data.dataset import SyntheticVideoDataset
from hyv.training.data.render import DATA_VERSION
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import TrainBatch, continuation_step, step_rng

logger = logging.getLogger(__name__)

CACHE_FILE = "latent_cache.pt"
CONTINUATIONS = "+continuations"  # suffix of a bucket's continuation clips in the cache file
_CHUNK = 64


def encoder_digest(vae: CausalVAE3D) -> str:
    """A short digest of the weights that make latents (encoder and quant_conv): a cache is only
    valid for the encoder that built it, and stays valid through a decoder-only fine-tune."""
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if not name.startswith(("encoder.", "quant_conv.")):
            continue
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LatentCache:
    """Posterior moments (fp16, (N, 2C, t, h, w)) and captions of cached train clips, per bucket;
    those of continuation clips per video bucket (empty without them)."""

    moments: dict[Bucket, torch.Tensor]
    captions: dict[Bucket, list[str]]
    continuation_moments: dict[Bucket, torch.Tensor] = dataclasses.field(default_factory=dict)
    continuation_captions: dict[Bucket, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return tuple(self.moments)

    def count(self, bucket: Bucket) -> int:
        return int(self.moments[bucket].shape[0])


def bucket_dataset(config: TrainConfig, bucket: Bucket, continuations: bool = False) -> SyntheticVideoDataset:
    """The synthetic train split at `bucket`'s shape (images: 1-frame clips); with `continuations`,
    its continuation clips (a video bucket's, starting at `config.continuation_starts`)."""
    return SyntheticVideoDataset(
        "train",
        num_frames=bucket.frames,
        size=bucket.width,
        height=bucket.height,
        image_fraction=1.0 if bucket.is_image else 0.0,
        seed=config.seed,
        length=config.dataset_length,
        continuation_starts=config.continuation_starts if continuations else None,  # type: ignore[attr-defined]
    )


def _cache_parts(config: DiTTrainConfig) -> list[tuple[str, Bucket, int, bool]]:
    """(name, bucket, clips wanted, continuations?) of every part of the cache, in build order."""
    buckets = config.train_buckets()
    parts = [(str(b), b, config.cache_images if b.is_image else config.cache_videos, False) for b in buckets]
    if config.cache_continuations:
        videos = [b for b in buckets if not b.is_image]
        parts += [(f"{b}{CONTINUATIONS}", b, config.cache_continuations, True) for b in videos]
    return parts


def encode_clips(vae: CausalVAE3D, dataset: object, indices: range, device: torch.device) -> torch.Tensor:
    """Posterior moments (fp16 on the CPU, (B, 2C, t, h, w)) of items `indices` of `dataset`."""
    items = [dataset[i] for i in indices]  # type: ignore[index]
    video = torch.stack([item["video"].float() for item in items]).to(device)  # (B, 3, T, H, W)
    with torch.no_grad():
        return vae.encode(video, tiled=False).moments.to("cpu", torch.float16)  # (B, 2C, t, h, w)


def build_latent_cache(
    vae: CausalVAE3D, config: DiTTrainConfig, path: Path, device: torch.device, progress: bool = True
) -> LatentCache:
    """Encode (or load, or finish building) the cache: `config.cache_videos` clips per video bucket,
    `config.cache_images` per image bucket and `config.cache_continuations` continuation clips per
    video bucket, keyed by bucket."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    buckets = config.train_buckets()
    parts = _cache_parts(config)
    key: dict[str, Any] = {
        "vae": encoder_digest(vae),
        "buckets": [str(b) for b in buckets],
        "seed": config.seed,
        "dataset_length": config.dataset_length,
        "data_version": DATA_VERSION,
    }
    starts = list(config.continuation_starts)
    state: dict[str, Any] = {"key": key, "continuation_starts": starts, "chunks": {}}
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            state = saved
        else:
            logger.info("latent cache %s was built for another VAE, data or buckets; rebuilding", path)
    chunks: dict[str, list[torch.Tensor]] = state["chunks"]
    if state.get("continuation_starts") != starts:  # those clips only: the plain ones stay valid
        for name in [name for name in chunks if name.endswith(CONTINUATIONS)]:
            del chunks[name]
        state["continuation_starts"] = starts
    for name, *_ in parts:
        chunks.setdefault(name, [])
    datasets = {name: bucket_dataset(config, b, cont) for name, b, _, cont in parts}
    done = {name: sum(chunk.shape[0] for chunk in chunks[name]) for name, *_ in parts}
    columns = (TextColumn("[bold]latent cache"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    vae.eval()
    path.parent.mkdir(parents=True, exist_ok=True)  # a later stage may build a skipped stage's cache
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(
            "cache",
            total=sum(n for _, _, n, _ in parts),
            completed=sum(min(done[name], n) for name, _, n, _ in parts),
        )
        for name, _, wanted, _ in parts:
            while done[name] < wanted:
                indices = range(done[name], min(done[name] + _CHUNK, wanted))
                chunks[name].append(encode_clips(vae, datasets[name], indices, device))
                done[name] += len(indices)
                tmp = path.with_suffix(".tmp")
                torch.save(state, tmp)
                tmp.replace(path)
                bar.update(task, advance=len(indices))

    def stacked(name: str, wanted: int) -> torch.Tensor:
        return torch.cat(chunks[name])[:wanted] if chunks[name] else torch.empty(0)

    cache = LatentCache({}, {})
    for name, b, wanted, cont in parts:
        moments = cache.continuation_moments if cont else cache.moments
        captions = cache.continuation_captions if cont else cache.captions
        moments[b] = stacked(name, wanted)
        captions[b] = [datasets[name].caption_of(i) for i in range(wanted)]
    return cache


def channel_stats(means: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of posterior means (N, C, t, h, w), accumulated in float64."""
    x = means.double().transpose(0, 1).reshape(means.shape[1], -1)  # (C, N * t * h * w)
    std = x.std(dim=1).clamp_min(1e-6)  # a dead channel must not divide by zero
    return tuple(x.mean(dim=1).tolist()), tuple(std.tolist())


def encoded_channel_stats(
    vae: CausalVAE3D, config: DiTTrainConfig, device: torch.device
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`channel_stats` of the first `config.latent_stats_clips` train videos, encoded now."""
    dataset = bucket_dataset(config, config.train_buckets()[0])
    count = min(config.latent_stats_clips, len(dataset))
    spans = [range(i, min(i + _CHUNK, count)) for i in range(0, count, _CHUNK)]
    chunks = [encode_clips(vae, dataset, span, device) for span in spans]
    channels = vae.config.latent_channels
    return channel_stats(torch.cat(chunks)[:, :channels].float())


class CachedLatentBatches:
    """Batches drawn from a `LatentCache`: one bucket per step (`pick_bucket`, shared by all ranks),
    rows per rank (the same seeding as SyntheticBatches)."""

    def __init__(self, config: DiTTrainConfig, cache: LatentCache) -> None:
        self.buckets = config.train_buckets()
        empty = [str(b) for b in self.buckets if b not in cache.moments or cache.count(b) == 0]
        if empty:
            raise ValueError(
                f"the latent cache holds no clips for buckets {empty} "
                "(DiTTrainConfig.cache_videos / cache_images must be > 0)"
            )
        if config.continuation_fraction > 0:
            missing = [
                str(b)
                for b in self.buckets
                if not b.is_image and cache.continuation_moments.get(b, torch.empty(0)).shape[0] == 0
            ]
            if missing:
                raise ValueError(
                    f"continuation_fraction={config.continuation_fraction}, but the latent cache holds "
                    f"no continuation clips for buckets {missing} "
                    "(DiTTrainConfig.cache_continuations must be > 0)"
                )
        self.config = config
        self.cache = cache

    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        c = self.config
        bucket = pick_bucket(
            self.buckets, c.image_fraction, c.seed, step, c.bucket_balance, c.batch_size, c.token_budget
        )
        rng = step_rng(c.seed, step, rank, stream=1)
        count = clips_per_batch(bucket, c.batch_size, c.token_budget)
        continuing = continuation_step(c, bucket, step, rank)
        pool = self.cache.continuation_moments if continuing else self.cache.moments
        captions = (self.cache.continuation_captions if continuing else self.cache.captions)[bucket]
        indices = rng.integers(0, pool[bucket].shape[0], size=count)
        moments = pool[bucket][torch.from_numpy(indices)].float()
        return TrainBatch(
            None, [captions[int(i)] for i in indices], moments=moments, image_conditioned=continuing
        )
