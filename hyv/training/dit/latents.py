"""A latent cache: the frozen VAE encodes a fixed set of training clips once, not at every step.

On the CPU the encoder costs more than the DiT's own forward and backward (a batch of eight 64x64x17
clips: ~0.55 s to encode against ~0.2 s for the small DiT's step), and the VAE is frozen during DiT
training, so encoding every clip at every step is wasted work. `build_latent_cache` encodes the first
`cache_videos` video and `cache_images` image items of the synthetic train split and stores their
posterior moments (mean and log-variance, fp16, unscaled); `CachedLatentBatches` then draws batches
from them. The posterior is still *sampled* at every step (a fresh draw of noise per step), as it would
be with the encoder in the loop; what is lost is only the clip variety beyond the cached set.

The cache is built in chunks and saved after each, so an interrupted build resumes; its key (VAE
weights digest, sizes, seed) must match or it is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hyv.models import CausalVAE3D
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import TrainBatch, step_rng

logger = logging.getLogger(__name__)

CACHE_FILE = "latent_cache.pt"
_CHUNK = 64


def vae_digest(vae: CausalVAE3D) -> str:
    """A short digest of the VAE's weights: a cache is only valid for the VAE that built it."""
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LatentCache:
    video_moments: torch.Tensor  # (N, 2C, t, h, w) fp16
    video_captions: list[str]
    image_moments: torch.Tensor  # (M, 2C, 1, h, w) fp16
    image_captions: list[str]


def _encode(vae: CausalVAE3D, dataset: object, indices: range, device: torch.device) -> torch.Tensor:
    items = [dataset[i] for i in indices]  # type: ignore[index]
    video = torch.stack([item["video"].float() for item in items]).to(device)  # (B, 3, T, H, W)
    with torch.no_grad():
        return vae.encode(video, tiled=False).moments.to("cpu", torch.float16)  # (B, 2C, t, h, w)


def build_latent_cache(
    vae: CausalVAE3D, config: DiTTrainConfig, path: Path, device: torch.device, progress: bool = True
) -> LatentCache:
    """Encode (or load, or finish building) the cache of `config.cache_videos` + `config.cache_images`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hyv.training.data.dataset import SyntheticVideoDataset

    key = {
        "vae": vae_digest(vae),
        "size": config.size,
        "num_frames": config.num_frames,
        "seed": config.seed,
        "dataset_length": config.dataset_length,
    }
    state: dict[str, object] = {"key": key, "video": [], "image": []}
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            state = saved
        else:
            logger.info("latent cache %s was built for another VAE or data; rebuilding", path)
    wanted = {"video": config.cache_videos, "image": config.cache_images}
    datasets = {
        kind: SyntheticVideoDataset(
            "train",
            num_frames=config.num_frames,
            size=config.size,
            image_fraction=1.0 if kind == "image" else 0.0,
            seed=config.seed,
            length=config.dataset_length,
        )
        for kind in wanted
    }
    done = {kind: sum(chunk.shape[0] for chunk in state[kind]) for kind in wanted}  # type: ignore[attr-defined]
    total = sum(wanted.values())
    columns = (TextColumn("[bold]latent cache"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    vae.eval()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("cache", total=total, completed=sum(min(done[k], wanted[k]) for k in wanted))
        for kind in wanted:
            while done[kind] < wanted[kind]:
                indices = range(done[kind], min(done[kind] + _CHUNK, wanted[kind]))
                state[kind].append(_encode(vae, datasets[kind], indices, device))  # type: ignore[attr-defined]
                done[kind] += len(indices)
                tmp = path.with_suffix(".tmp")
                torch.save(state, tmp)
                tmp.replace(path)
                bar.update(task, advance=len(indices))
    caption = {kind: [datasets[kind][i]["caption"] for i in range(wanted[kind])] for kind in wanted}

    def moments(kind: str) -> torch.Tensor:
        chunks: list[torch.Tensor] = state[kind]  # type: ignore[assignment]
        return torch.cat(chunks)[: wanted[kind]] if chunks else torch.empty(0)

    return LatentCache(moments("video"), caption["video"], moments("image"), caption["image"])


def channel_stats(means: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of posterior means (N, C, t, h, w), accumulated in float64."""
    x = means.double().transpose(0, 1).reshape(means.shape[1], -1)  # (C, N * t * h * w)
    std = x.std(dim=1).clamp_min(1e-6)  # a dead channel must not divide by zero
    return tuple(x.mean(dim=1).tolist()), tuple(std.tolist())


def encoded_channel_stats(
    vae: CausalVAE3D, config: DiTTrainConfig, device: torch.device
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`channel_stats` of the first `config.latent_stats_clips` train videos, encoded now."""
    from hyv.training.data.dataset import SyntheticVideoDataset

    dataset = SyntheticVideoDataset(
        "train",
        num_frames=config.num_frames,
        size=config.size,
        image_fraction=0.0,
        seed=config.seed,
        length=config.dataset_length,
    )
    count = min(config.latent_stats_clips, len(dataset))
    spans = [range(i, min(i + _CHUNK, count)) for i in range(0, count, _CHUNK)]
    chunks = [_encode(vae, dataset, span, device) for span in spans]
    channels = vae.config.latent_channels
    return channel_stats(torch.cat(chunks)[:, :channels].float())


class CachedLatentBatches:
    """Joint image + video batches drawn from a `LatentCache` (same coin and seeding as SyntheticBatches)."""

    def __init__(self, config: DiTTrainConfig, cache: LatentCache) -> None:
        if cache.video_moments.shape[0] == 0:
            raise ValueError("the latent cache holds no video clips (DiTTrainConfig.cache_videos=0)")
        if config.image_fraction > 0 and cache.image_moments.shape[0] == 0:
            raise ValueError(
                f"image_fraction={config.image_fraction} but the latent cache holds no images "
                "(set DiTTrainConfig.cache_images > 0)"
            )
        self.config = config
        self.cache = cache

    def batch(self, step: int, rank: int = 0) -> TrainBatch:
        coin = step_rng(self.config.seed, step, 0, stream=2).random()
        images = self.config.image_fraction > 0 and coin < self.config.image_fraction
        rng = step_rng(self.config.seed, step, rank, stream=1)
        moments = self.cache.image_moments if images else self.cache.video_moments
        captions = self.cache.image_captions if images else self.cache.video_captions
        indices = rng.integers(0, moments.shape[0], size=self.config.batch_size)
        picked = torch.from_numpy(indices)
        return TrainBatch(None, [captions[int(i)] for i in indices], moments=moments[picked].float())
