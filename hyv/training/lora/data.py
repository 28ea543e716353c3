"""The LoRA trainer's clips: bouncing clips of the "bouncing_train" split, encoded once by the
bundle's frozen VAE (as the DiT trainer's latent cache, hyv/training/dit/latents.py, does for the
base data). The posterior is still sampled at every step; what is cached is its moments.

The cache file (`out_dir/bouncing_latents.pt`) carries a key (VAE digest, clip shape, seed, count);
another key rebuilds it, so a resumed run trains on exactly the same clips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from hyv.models import CausalVAE3D
from hyv.training.data.dataset import SyntheticVideoDataset
from hyv.training.dit.latents import encode_clips, encoder_digest
from hyv.training.lora.config import LoRATrainConfig

logger = logging.getLogger(__name__)

CACHE_FILE = "bouncing_latents.pt"
PRIOR_CACHE_FILE = "prior_latents.pt"
_CHUNK = 32


@dataclass(frozen=True)
class ClipLatents:
    moments: torch.Tensor  # (N, 2C, t, h, w) fp16: posterior mean and log-variance, unscaled
    captions: list[str]


def bouncing_dataset(config: LoRATrainConfig, split: str = "bouncing_train") -> SyntheticVideoDataset:
    return SyntheticVideoDataset(
        split,  # type: ignore[arg-type]
        num_frames=config.num_frames,
        size=config.size,
        image_fraction=0.0,
        seed=config.seed,
        length=config.dataset_length,
    )


def build_bouncing_cache(
    vae: CausalVAE3D, config: LoRATrainConfig, out_dir: Path, device: torch.device, prior: bool = False
) -> ClipLatents:
    """Encode (or load) the first `config.cache_videos` clips of the bouncing train split, or with
    `prior` the first `config.prior_videos` videos of the base model's train split."""
    dataset = bouncing_dataset(config, "train" if prior else "bouncing_train")
    count = min(config.prior_videos if prior else config.cache_videos, len(dataset))
    key = {
        "split": dataset.split,
        "vae": encoder_digest(vae),
        "size": config.size,
        "frames": config.num_frames,
        "seed": config.seed,
        "count": count,
        "dataset_length": config.dataset_length,
    }
    path = out_dir / (PRIOR_CACHE_FILE if prior else CACHE_FILE)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            return ClipLatents(saved["moments"], saved["captions"])
        logger.info("bouncing latent cache %s was built for another VAE or data; rebuilding", path)
    vae.eval()
    chunks = [
        encode_clips(vae, dataset, range(start, min(start + _CHUNK, count)), device)
        for start in range(0, count, _CHUNK)
    ]
    latents = ClipLatents(torch.cat(chunks), [dataset.caption_of(i) for i in range(count)])
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "moments": latents.moments, "captions": latents.captions}, tmp)
    tmp.replace(path)
    return latents
