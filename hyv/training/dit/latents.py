"""A latent cache: the frozen VAE encodes a fixed set of training clips once, not at every step.

On the CPU the encoder costs more than the DiT's own forward and backward (a batch of eight 64x64x17
clips: ~0.55 s to encode against ~0.2 s for the small DiT's step), and the VAE is frozen during DiT
training, so encoding every clip at every step is wasted work. `build_latent_cache` encodes the first
`cache_videos` items of each video bucket and `cache_images` of each image bucket of the synthetic
train split (hyv.training.data.buckets) and stores their posterior moments (mean and log-variance,
fp16, unscaled); `CachedLatentBatches` then draws batches from them. The posterior is still
*sampled* at every step (a fresh draw of noise per step), as it would be with the encoder in the
loop; what is lost is only the clip variety beyond the cached set.

The cache is built in chunks and saved after each, so an interrupted build resumes; its key (VAE
encoder digest, buckets, seed, dataset length, the data's `DATA_VERSION`) must match or it is
rebuilt.
"""

from __future__ import annotations

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
from hyv.training.dit.data import TrainBatch, step_rng

logger = logging.getLogger(__name__)

CACHE_FILE = "latent_cache.pt"
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
    """Posterior moments (fp16, (N, 2C, t, h, w)) and captions of cached train clips, per bucket."""

    moments: dict[Bucket, torch.Tensor]
    captions: dict[Bucket, list[str]]

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return tuple(self.moments)

    def count(self, bucket: Bucket) -> int:
        return int(self.moments[bucket].shape[0])


def bucket_dataset(config: TrainConfig, bucket: Bucket) -> SyntheticVideoDataset:
    """The synthetic train split at `bucket`'s shape (images: 1-frame clips)."""
    return SyntheticVideoDataset(
        "train",
        num_frames=bucket.frames,
        size=bucket.width,
        height=bucket.height,
        image_fraction=1.0 if bucket.is_image else 0.0,
        seed=config.seed,
        length=config.dataset_length,
    )


def encode_clips(vae: CausalVAE3D, dataset: object, indices: range, device: torch.device) -> torch.Tensor:
    """Posterior moments (fp16 on the CPU, (B, 2C, t, h, w)) of items `indices` of `dataset`."""
    items = [dataset[i] for i in indices]  # type: ignore[index]
    video = torch.stack([item["video"].float() for item in items]).to(device)  # (B, 3, T, H, W)
    with torch.no_grad():
        return vae.encode(video, tiled=False).moments.to("cpu", torch.float16)  # (B, 2C, t, h, w)


def build_latent_cache(
    vae: CausalVAE3D, config: DiTTrainConfig, path: Path, device: torch.device, progress: bool = True
) -> LatentCache:
    """Encode (or load, or finish building) the cache: `config.cache_videos` clips per video bucket
    and `config.cache_images` per image bucket, keyed by bucket."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    buckets = config.train_buckets()
    key = {
        "vae": encoder_digest(vae),
        "buckets": [str(b) for b in buckets],
        "seed": config.seed,
        "dataset_length": config.dataset_length,
        "data_version": DATA_VERSION,
    }
    state: dict[str, Any] = {"key": key, "chunks": {str(b): [] for b in buckets}}
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            state = saved
        else:
            logger.info("latent cache %s was built for another VAE, data or buckets; rebuilding", path)
    chunks: dict[str, list[torch.Tensor]] = state["chunks"]
    wanted = {b: config.cache_images if b.is_image else config.cache_videos for b in buckets}
    datasets = {b: bucket_dataset(config, b) for b in buckets}
    done = {b: sum(chunk.shape[0] for chunk in chunks[str(b)]) for b in buckets}
    columns = (TextColumn("[bold]latent cache"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    vae.eval()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(
            "cache", total=sum(wanted.values()), completed=sum(min(done[b], wanted[b]) for b in buckets)
        )
        for bucket in buckets:
            while done[bucket] < wanted[bucket]:
                indices = range(done[bucket], min(done[bucket] + _CHUNK, wanted[bucket]))
                chunks[str(bucket)].append(encode_clips(vae, datasets[bucket], indices, device))
                done[bucket] += len(indices)
                tmp = path.with_suffix(".tmp")
                torch.save(state, tmp)
                tmp.replace(path)
                bar.update(task, advance=len(indices))
    moments = {
        b: torch.cat(chunks[str(b)])[: wanted[b]] if chunks[str(b)] else torch.empty(0) for b in buckets
    }
    captions = {b: [datasets[b].caption_of(i) for i in range(wanted[b])] for b in buckets}
    return LatentCache(moments, captions)


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
        self.config = config
        self.cache = cache

    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        c = self.config
        bucket = pick_bucket(self.buckets, c.image_fraction, c.seed, step)
        rng = step_rng(c.seed, step, rank, stream=1)
        count = clips_per_batch(bucket, c.batch_size, c.token_budget)
        indices = rng.integers(0, self.cache.count(bucket), size=count)
        picked = torch.from_numpy(indices)
        captions = self.cache.captions[bucket]
        moments = self.cache.moments[bucket][picked].float()
        return TrainBatch(None, [captions[int(i)] for i in indices], moments=moments)
