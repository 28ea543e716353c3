"""Building blocks shared by both stages: the teacher's velocity, clips from the latent cache, the
image condition, and a chunked on-disk cache of teacher outputs.

Teacher outputs are computed once, before training, and regressed on afterwards: on the CPU the
teacher's forwards (two per sample for true CFG, dozens per trajectory) would otherwise cost more
than the student's own step. The cache is written one chunk per file (`out_dir/teacher_cache/`),
every chunk a pure function of (seed, kind, chunk index), so an interrupted build resumes and a
resumed run regresses on exactly the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hyv.models import (
    DiagonalGaussian,
    HunyuanVideoDiT,
    TextEmbeddings,
    TextEncoder,
    VAEConfig,
    to_dit_latents,
)
from hyv.training.dit.latents import LatentCache

logger = logging.getLogger(__name__)

# DiT metadata written by the stages (str -> str in the safetensors header).
CFG_DISTILLED_KEY = "cfg_distilled"  # "1": the guidance embedding carries CFG (one forward per step)
GUIDANCE_RANGE_KEY = "distill_guidance_range"  # JSON [min, max] the student was trained for
BASE_GUIDANCE = 1.0  # what base training fed the (zeroed, frozen) guidance embedding, x1000

Chunk = dict[str, Any]  # tensors (first dim = samples) and a "captions" list


def module_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's weights: a teacher cache is only valid for its teacher."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_text(encoder: TextEncoder, prompts: list[str], device: torch.device) -> TextEmbeddings:
    """Frozen text embeddings in fp32 on `device` (one call, so every row has the same length)."""
    with torch.no_grad():
        return encoder.encode(prompts).to(device, torch.float32)


def split_text(text: TextEmbeddings, n: int) -> tuple[TextEmbeddings, TextEmbeddings]:
    """The first n rows and the rest."""
    head = TextEmbeddings(text.states[:n], text.mask[:n], text.pooled[:n])
    tail = TextEmbeddings(text.states[n:], text.mask[n:], text.pooled[n:])
    return head, tail


def dit_forward(
    dit: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, text: TextEmbeddings, guidance: torch.Tensor
) -> torch.Tensor:
    """One DiT forward with HunyuanVideo's conventions: timestep and guidance x1000."""
    return dit(x, sigma * 1000.0, text.states, text.mask, text.pooled, guidance * 1000.0)  # type: ignore[no-any-return]


@dataclass
class Teacher:
    """The frozen teacher DiT; true CFG in one batched forward, or its distilled guidance."""

    dit: HunyuanVideoDiT
    cfg_distilled: bool  # True: its guidance embedding already carries CFG

    @torch.no_grad()
    def cond_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: TextEmbeddings, uncond: TextEmbeddings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_cond, v_uncond) from one forward of the doubled batch (2B, ...)."""
        b = x.shape[0]
        text = TextEmbeddings(
            torch.cat([cond.states, uncond.states]),
            torch.cat([cond.mask, uncond.mask]),
            torch.cat([cond.pooled, uncond.pooled]),
        )
        guidance = torch.full((2 * b,), BASE_GUIDANCE, device=x.device)
        both = dit_forward(self.dit, torch.cat([x, x]), torch.cat([sigma, sigma]), text, guidance)
        return both[:b], both[b:]

    @torch.no_grad()
    def guided(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond: TextEmbeddings,
        uncond: TextEmbeddings,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        """The teacher's guided velocity at per-sample guidance (B,)."""
        if self.cfg_distilled:
            return dit_forward(self.dit, x, sigma, cond, guidance)
        v_cond, v_uncond = self.cond_uncond(x, sigma, cond, uncond)
        g = guidance.view(-1, *([1] * (x.ndim - 1)))
        return v_uncond + g * (v_cond - v_uncond)


class ClipSource:
    """Captions, clean latents and first-frame latents of the cached training clips, by bucket name
    ("64x64x17"; hyv.training.data.buckets)."""

    def __init__(self, cache: LatentCache, vae_config: VAEConfig, device: torch.device) -> None:
        self.cache = cache
        self.vae_config = vae_config
        self.device = device
        self.buckets = {str(b): b for b in cache.buckets}

    def count(self, bucket: str) -> int:
        return self.cache.count(self.buckets[bucket])

    def stream(self, bucket: str) -> int:
        """The bucket's offset among the RNG streams (its place in the cache: videos first)."""
        return list(self.buckets).index(bucket)

    def continuation_count(self, bucket: str) -> int:
        cached = self.cache.continuation_moments.get(self.buckets[bucket])
        return 0 if cached is None else int(cached.shape[0])

    def take(
        self, bucket: str, indices: list[int], generator: torch.Generator, continuations: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(x0 (B, C, t, h, w) posterior samples, first latent frame (B, C, 1, h, w) posterior means,
        captions), both scaled as the DiT sees them; of the continuation clips with `continuations`."""
        key = self.buckets[bucket]
        moments = (self.cache.continuation_moments if continuations else self.cache.moments)[key]
        captions = (self.cache.continuation_captions if continuations else self.cache.captions)[key]
        posterior = DiagonalGaussian(moments[torch.tensor(indices)].to(self.device, torch.float32))
        x0 = to_dit_latents(posterior.sample(generator).float(), self.vae_config)
        first = to_dit_latents(posterior.mode().float()[:, :, :1], self.vae_config)
        return x0, first, [captions[i] for i in indices]


def with_continuations(
    clips: ClipSource,
    bucket: str,
    fraction: float,
    rows: tuple[torch.Tensor, list[str], torch.Tensor],
    generator: torch.Generator,
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(first, captions, i2v) of a chunk with a `fraction` share of its rows (drawn from
    `generator`) replaced by continuation clips, which are always image-conditioned. Nothing is
    drawn with `fraction` 0, so chunks without continuations keep their random stream."""
    first, captions, i2v = rows
    available = clips.continuation_count(bucket)
    if fraction <= 0 or available == 0 or first.shape[0] == 0:
        return first, captions, i2v
    continuing = torch.rand(len(captions), generator=generator, device=first.device) < fraction
    chosen = continuing.nonzero().flatten().tolist()
    if not chosen:
        return first, captions, i2v
    picks = torch.randint(0, available, (len(chosen),), generator=generator, device=first.device).tolist()
    _, their_first, their_captions = clips.take(bucket, picks, generator, continuations=True)
    first, captions = first.clone(), list(captions)
    first[chosen] = their_first
    for row, text in zip(chosen, their_captions, strict=True):
        captions[row] = text
    return first, captions, i2v | continuing


def image_condition(first: torch.Tensor, i2v: torch.Tensor, frames: int) -> torch.Tensor:
    """The latent_concat condition (B, C+1, t, h, w): the first-frame latent and mask 1 on latent
    frame 0 where `i2v` (B,) is set, zeros elsewhere (text-to-video), as the pipeline feeds it."""
    b, channels, _, h, w = first.shape
    cond = torch.zeros(b, channels + 1, frames, h, w, device=first.device)
    if frames > 1:  # an image's "first frame" is the whole target: never I2V
        on = i2v.view(b, 1, 1, 1, 1).float()
        cond[:, :channels, :1] = first * on
        cond[:, channels:, :1] = on
    return cond


def with_condition(dit: HunyuanVideoDiT, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The DiT input: x (B, C, t, h, w), plus the image condition for a latent_concat DiT."""
    if dit.config.image_condition == "latent_concat":
        return torch.cat([x, cond], dim=1)  # (B, 2C + 1, t, h, w)
    return x


def build_chunked_cache(
    directory: Path,
    key: dict[str, Any],
    plan: dict[str, int],
    chunk_size: int,
    make_chunk: Callable[[str, int, int], Chunk],
    label: str,
    progress: bool,
) -> dict[str, Chunk]:
    """For each kind (a bucket name), `plan[kind]` samples made `chunk_size` at a time by
    make_chunk(kind, index, count); chunks already on disk under the same key are loaded, not
    recomputed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "key.json"
    if key_file.exists() and json.loads(key_file.read_text()) != key:
        logger.info("teacher cache %s was built for another teacher or config; rebuilding", directory)
        for old in directory.glob("*.pt"):
            old.unlink()
    key_file.write_text(json.dumps(key, sort_keys=True))
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    result: dict[str, Chunk] = {}
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(label, total=sum(plan.values()))
        for kind, total in plan.items():
            chunks: list[Chunk] = []
            for index, start in enumerate(range(0, total, chunk_size)):
                count = min(chunk_size, total - start)
                path = directory / f"{kind}_{index:05d}.pt"
                if path.exists():
                    chunk = torch.load(path, map_location="cpu", weights_only=False)
                else:
                    chunk = {
                        k: v.cpu() if torch.is_tensor(v) else v
                        for k, v in make_chunk(kind, index, count).items()
                    }
                    tmp = path.with_suffix(".tmp")
                    torch.save(chunk, tmp)
                    tmp.replace(path)
                chunks.append(chunk)
                bar.update(task, advance=count)
            if chunks:
                result[kind] = concat_chunks(chunks)
    return result


def concat_chunks(chunks: list[Chunk]) -> Chunk:
    out: Chunk = {}
    for name in chunks[0]:
        values = [c[name] for c in chunks]
        out[name] = torch.cat(values) if torch.is_tensor(values[0]) else [v for vs in values for v in vs]
    return out


def select(chunk: Chunk, indices: list[int], device: torch.device) -> Chunk:
    """Rows `indices` of a cached chunk, tensors in fp32 on `device`."""
    picked = torch.tensor(indices)
    return {
        name: value[picked].to(device, torch.float32)
        if torch.is_tensor(value)
        else [value[i] for i in indices]
        for name, value in chunk.items()
    }
