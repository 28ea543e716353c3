"""The distillation loop shared by both stages: teacher and student, caches, steps, checkpoints,
exact resume, DDP and the exported bundle.

A stage (hyv/training/distill/cfg.py, hyv/training/distill/steps.py) supplies three things:

* `build_pools()`: the teacher outputs it regresses on (cached once, see common.py), for training
  and for a small held-out evaluation set;
* `loss(step, generator)`: the regression loss of one batch;
* `evaluate(dit)`: one number, the student's error against the teacher on the held-out set,
  measured before training (stored in the checkpoints) and after (`out_dir/metrics.json`).

The student starts as the teacher's DiT, with every parameter trained, its guidance embedding
included (base training zeroed and froze it). The text encoder and VAE are the teacher's, frozen
and exported unchanged. Under torchrun every process builds the same caches (rank-named files) and
draws its own rows per step; rank 0 writes checkpoints and the bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hyv.engine.bundle import ModelBundle, load_bundle, save_bundle
from hyv.engine.bundle_spec import GUIDANCE_MODE_METADATA_KEY
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY
from hyv.models import HunyuanVideoDiT, read_dit_metadata, save_dit
from hyv.training.core import (
    StepCallback,
    Trainer,
    decay_param_groups,
    init_distributed,
    process_device,
)
from hyv.training.data.buckets import clips_per_batch, pick_bucket
from hyv.training.distill.common import (
    CFG_DISTILLED_KEY,
    Chunk,
    ClipSource,
    Teacher,
    build_chunked_cache,
    module_digest,
    select,
)
from hyv.training.distill.config import DistillConfig
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import step_seed
from hyv.training.dit.latents import build_latent_cache
from hyv.training.state import EMA, lr_at

logger = logging.getLogger(__name__)

BUNDLE_SUBDIR = "bundle"
METRICS_FILE = "metrics.json"

__all__ = ["BUNDLE_SUBDIR", "METRICS_FILE", "DistillTrainer", "StepCallback"]


class DistillTrainer(Trainer[DistillConfig, float]):
    """Base class of the stages; see the module docstring."""

    stage = ""
    metric_name = ""
    plot_title = "distillation loss"
    plot_ylabel = "MSE to the teacher"

    def __init__(self, config: DistillConfig) -> None:
        config.validate()
        if config.stage != self.stage:
            raise ValueError(f"DistillConfig.stage={config.stage!r} given to the {self.stage!r} trainer")
        rank, world, local_rank = init_distributed()
        super().__init__(config, rank, world)
        self.device = process_device(config.device, local_rank)
        self.show = self.show_progress

        bundle = load_bundle(config.teacher, dtype=torch.float32)
        dit = bundle.dit
        if not dit.config.guidance_embed:
            raise ValueError(
                f"teacher {config.teacher}: its DiT has no guidance embedding (guidance_embed=False), "
                "so a student cannot carry guidance in one forward"
            )
        if bundle.text_encoder is None:
            raise ValueError(f"teacher {config.teacher} has no text encoder")
        self.teacher_metadata = read_dit_metadata(config.teacher / "dit")
        self.spec = bundle.spec
        self.flow_shift = config.flow_shift if config.flow_shift is not None else self.spec.limits.flow_shift
        self.guidance_range = config.guidance_range(self.spec.limits.guidance)
        self.vae = bundle.vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = bundle.text_encoder.to(device=self.device)
        if isinstance(self.text_encoder, nn.Module):
            self.text_encoder.eval().requires_grad_(False)
        teacher_dit = copy.deepcopy(dit).to(self.device).eval().requires_grad_(False)
        self.teacher = Teacher(teacher_dit, self.teacher_metadata.get(CFG_DISTILLED_KEY) == "1")

        self.student: HunyuanVideoDiT = dit.to(self.device).train().requires_grad_(True)
        self.trained = self.student
        self.ema = EMA(self.student, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            decay_param_groups(self.student, config.weight_decay), lr=config.lr, betas=config.betas
        )
        self.clips = ClipSource(self._latent_cache(), self.vae.config, self.device)
        self.build_pools()
        del self.teacher  # everything the stage needs from it is cached now
        self.metric_before: float | None = None
        if config.resume:
            self.resume()
        if self.metric_before is None:
            self.metric_before = self.evaluate(self.student)
            logger.info("%s before distillation: %.5g", self.metric_name, self.metric_before)
        self.model: nn.Module = self.student
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=device_ids)

    # --- what a stage provides ---------------------------------------------------------------------

    @abstractmethod
    def build_pools(self) -> None:
        """Build (or load) the stage's cached teacher targets."""

    @abstractmethod
    def make_chunk(self, kind: str, index: int, count: int, stream: int) -> Chunk:
        """`count` teacher targets of `kind` ("video" or "image"), chunk `index`, from RNG `stream`."""

    @abstractmethod
    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """The stage's training loss for one step."""

    @abstractmethod
    def evaluate(self, dit: HunyuanVideoDiT) -> float:
        """The stage's error against the teacher on held-out samples (lower is better)."""

    def export_metadata(self) -> dict[str, str]:
        """DiT metadata of the exported student (the stage adds its keys). Not the teacher's
        schedule, nor its `guidance_mode: true_cfg` (a served teacher's): the student's guidance
        embedding is trained to carry the guidance, so it samples with one branch."""
        inherited = {SCHEDULE_METADATA_KEY, GUIDANCE_MODE_METADATA_KEY}
        return {k: v for k, v in self.teacher_metadata.items() if k not in inherited}

    def export_limits_steps(self) -> int:
        return self.spec.limits.steps

    # --- shared helpers --------------------------------------------------------------------------

    def _latent_cache(self) -> Any:
        c = self.config
        latent_config = DiTTrainConfig(
            out_dir=c.out_dir,
            num_frames=c.num_frames,
            size=c.size,
            image_fraction=c.image_fraction,
            buckets=c.buckets,
            seed=c.seed,
            dataset_length=c.dataset_length,
            cache_videos=c.cache_videos,
            cache_images=c.cache_images,
            cache_continuations=c.cache_continuations if c.continuation_fraction > 0 else 0,
            continuation_starts=c.continuation_starts,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = "latent_cache.pt" if self.world == 1 else f"rank{self.rank}_latent_cache.pt"
        path = c.latent_cache if c.latent_cache is not None and self.world == 1 else self.out_dir / name
        return build_latent_cache(self.vae, latent_config, path, self.device, self.show)

    def build_teacher_pools(
        self, key_fields: tuple[str, ...], label: str, streams: tuple[int, int], **key: Any
    ) -> None:
        """`self.pools` (training, by kind) and `self.eval_pool` (held-out videos) of teacher targets
        from `make_chunk`, cached under a key of the teacher's weights and the config fields
        `key_fields` that shape them (another key rebuilds the cache)."""
        c = self.config
        cache_key = {
            "teacher": module_digest(self.teacher.dit),
            **key,
            "stage": self.stage,
            **{k: getattr(c, k) for k in key_fields},
            "flow_shift": self.flow_shift,
            "guidance_range": list(self.guidance_range),
        }
        train_stream, eval_stream = streams
        self.pools = build_chunked_cache(
            self.cache_dir(),
            cache_key,
            self.pool_plan(),
            c.teacher_batch,
            lambda kind, index, count: self.make_chunk(kind, index, count, stream=train_stream),
            label,
            self.show,
        )
        videos = [str(b) for b in c.train_buckets() if not b.is_image]
        self.eval_pool = build_chunked_cache(
            self.cache_dir() / "eval",
            cache_key,
            {name: n for name, n in zip(videos, _split(c.eval_samples, len(videos)), strict=True) if n},
            c.teacher_batch,
            lambda kind, index, count: self.make_chunk(kind, index, count, stream=eval_stream),
            f"{label} (eval)",
            self.show,
        )

    def pool_plan(self) -> dict[str, int]:
        """Teacher samples per bucket: `image_fraction` of them images, shared evenly by the image
        buckets; the rest shared evenly by the video buckets."""
        c = self.config
        buckets = c.train_buckets()
        videos = [str(b) for b in buckets if not b.is_image]
        images = [str(b) for b in buckets if b.is_image]
        image_total = round(c.teacher_samples * c.image_fraction) if images else 0
        plan = dict(zip(videos, _split(c.teacher_samples - image_total, len(videos)), strict=True))
        plan.update(zip(images, _split(image_total, len(images)), strict=True))
        return {name: count for name, count in plan.items() if count > 0}

    def step_pool(self, step: int) -> tuple[Chunk, int]:
        """The teacher pool of step `step`'s bucket (shared by all ranks) and its rows per batch."""
        c = self.config
        buckets = tuple(b for b in c.train_buckets() if str(b) in self.pools)
        bucket = pick_bucket(
            buckets, c.image_fraction, c.seed, step, c.bucket_balance, c.batch_size, c.token_budget
        )
        return self.pools[str(bucket)], clips_per_batch(bucket, c.batch_size, c.token_budget)

    def eval_rows(self) -> Iterator[Chunk]:
        """The held-out teacher targets, `teacher_batch` rows (of one bucket) at a time."""
        for pool in self.eval_pool.values():
            n = len(pool["captions"])
            for start in range(0, n, self.config.teacher_batch):
                yield select(pool, list(range(start, min(n, start + self.config.teacher_batch))), self.device)

    def cache_dir(self) -> Path:
        return self.out_dir / ("teacher_cache" if self.world == 1 else f"rank{self.rank}_teacher_cache")

    def sample_guidance(self, n: int, generator: torch.Generator) -> torch.Tensor:
        low, high = self.guidance_range
        return low + (high - low) * torch.rand(n, generator=generator, device=self.device)

    def generator(self, *keys: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(step_seed(self.config.seed, *keys))

    # --- the loop (hyv/training/core.py) ----------------------------------------------------------

    @property
    def losses(self) -> list[float]:
        """The loss of every step so far (the core's metrics history)."""
        return self.history

    def train_step(self, step: int) -> float:
        c = self.config
        self.set_lr(lr_at(step, c.lr, c.warmup_steps, c.lr_schedule, c.steps))
        loss = self.loss(step, self.generator(step, self.rank))
        self.optimize(loss)
        return self.mean_over_ranks(loss)

    def run_step(self, step: int) -> float:
        return self.train_step(step)

    def export(self) -> Path:
        return self.export_bundle()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "metric_before": self.metric_before}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        super().load_state_dict(payload)
        self.metric_before = payload.get("metric_before")

    def export_bundle(self, directory: Path | None = None) -> Path:
        """Write the EMA student as a served bundle, with its metadata, and `metrics.json`."""
        directory = directory or self.out_dir / BUNDLE_SUBDIR
        if self.rank == 0:
            student: HunyuanVideoDiT = self.ema.model  # type: ignore[assignment]
            limits = dataclasses.replace(self.spec.limits, steps=self.export_limits_steps())
            spec = self.spec.with_trained_dit(limits=limits)
            save_bundle(ModelBundle(spec, student, self.vae, self.text_encoder), directory)
            save_dit(student, directory / "dit", metadata=self.export_metadata())  # with the metadata
            after = self.evaluate(student)
            metrics = {
                "stage": self.stage,
                "metric": self.metric_name,
                "before": self.metric_before,
                "after": after,
                "steps": self.step,
                "final_loss": self.losses[-1] if self.losses else None,
            }
            (self.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            logger.info(
                "%s: %.5g before, %.5g after distillation", self.metric_name, self.metric_before, after
            )
        self.barrier()
        return directory


def _split(total: int, parts: int) -> list[int]:
    """`total` shared by `parts` as evenly as integers allow (the first ones get the remainder)."""
    if parts == 0:
        return []
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]
