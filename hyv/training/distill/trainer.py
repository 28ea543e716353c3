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
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hyv.engine.bundle import ModelBundle, load_bundle, save_bundle
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY
from hyv.models import HunyuanVideoDiT, read_dit_metadata, save_dit
from hyv.training.distill.common import CFG_DISTILLED_KEY, ClipSource, Teacher
from hyv.training.distill.config import DistillConfig
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import step_seed
from hyv.training.dit.latents import build_latent_cache
from hyv.training.dit.state import EMA, load_for_resume, lr_at, save_checkpoint, save_loss_plot
from hyv.training.dit.trainer import init_distributed

logger = logging.getLogger(__name__)

BUNDLE_SUBDIR = "bundle"
LOSS_PLOT = "loss.png"
LOSS_CSV = "losses.csv"
METRICS_FILE = "metrics.json"
_RESUME_FREE = {"resume", "progress", "steps", "checkpoint_every", "keep_checkpoints", "device"}

StepCallback = Callable[[int, float], None]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class DistillTrainer(ABC):
    """Base class of the stages; see the module docstring."""

    stage = ""
    metric_name = ""
    plot_title = "distillation loss"

    def __init__(self, config: DistillConfig) -> None:
        config.validate()
        if config.stage != self.stage:
            raise ValueError(f"DistillConfig.stage={config.stage!r} given to the {self.stage!r} trainer")
        self.config = config
        self.out_dir = config.out_dir
        self.rank, self.world, local_rank = init_distributed()
        if config.device is not None:
            self.device = torch.device(config.device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        self.show = config.progress and self.rank == 0

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
        self.ema = EMA(self.student, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.student, config.weight_decay), lr=config.lr, betas=config.betas
        )
        self.clips = ClipSource(self._latent_cache(), self.vae.config, self.device)
        self.build_pools()
        del self.teacher  # everything the stage needs from it is cached now
        self.step = 0
        self.losses: list[float] = []
        self.metric_before: float | None = None
        if config.resume:
            self._resume()
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
    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        """The stage's training loss for one step."""

    @abstractmethod
    def evaluate(self, dit: HunyuanVideoDiT) -> float:
        """The stage's error against the teacher on held-out samples (lower is better)."""

    def export_metadata(self) -> dict[str, str]:
        """DiT metadata of the exported student (the stage adds its keys)."""
        return {k: v for k, v in self.teacher_metadata.items() if k != SCHEDULE_METADATA_KEY}

    def export_limits_steps(self) -> int:
        return self.spec.limits.steps

    # --- shared helpers --------------------------------------------------------------------------

    def _latent_cache(self) -> Any:
        c = self.config
        latent_config = DiTTrainConfig(
            out_dir=c.out_dir,
            num_frames=c.num_frames,
            size=c.size,
            seed=c.seed,
            dataset_length=c.dataset_length,
            cache_videos=c.cache_videos,
            cache_images=c.cache_images,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = "latent_cache.pt" if self.world == 1 else f"rank{self.rank}_latent_cache.pt"
        return build_latent_cache(self.vae, latent_config, self.out_dir / name, self.device, self.show)

    def cache_dir(self) -> Path:
        return self.out_dir / ("teacher_cache" if self.world == 1 else f"rank{self.rank}_teacher_cache")

    def sample_guidance(self, n: int, generator: torch.Generator) -> torch.Tensor:
        low, high = self.guidance_range
        return low + (high - low) * torch.rand(n, generator=generator, device=self.device)

    def generator(self, *keys: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(step_seed(self.config.seed, *keys))

    # --- the loop ----------------------------------------------------------------------------------

    def train_step(self, step: int) -> float:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, c.lr, c.warmup_steps, c.lr_schedule, c.steps)
        loss = self.loss(step, self.generator(step, self.rank))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            params = [p for p in self.student.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        self.optimizer.step()
        self.ema.update(self.student)
        value = loss.detach()
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return float(value)

    def train(self, on_step: StepCallback | None = None) -> Path:
        """Run up to `config.steps`; returns the exported bundle directory."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        c = self.config
        columns = (
            TextColumn(f"[bold]distill {self.stage}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("loss {task.fields[loss]}"),
        )
        with Progress(*columns, disable=not self.show) as bar:
            task = bar.add_task(self.stage, total=c.steps, completed=self.step, loss="-")
            while self.step < c.steps:
                loss = self.train_step(self.step)
                self.step += 1
                self.losses.append(loss)
                bar.update(task, advance=1, loss=f"{loss:.4f}")
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.step, loss)
        return self.export_bundle()

    # --- state -------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        path = None
        if self.rank == 0:
            payload = {
                "model": self.student.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "losses": list(self.losses),
                "metric_before": self.metric_before,
                "config": self.config.to_dict(),
            }
            path = save_checkpoint(self.out_dir, self.step, payload, self.config.keep_checkpoints)
            lines = ["step,loss", *(f"{i + 1},{v:.6g}" for i, v in enumerate(self.losses))]
            (self.out_dir / LOSS_CSV).write_text("\n".join(lines) + "\n")
            save_loss_plot(
                self.losses, self.out_dir / LOSS_PLOT, title=self.plot_title, ylabel="MSE to the teacher"
            )
        self._barrier()
        return path

    def _resume(self) -> None:
        payload = load_for_resume(self.out_dir, self.config.to_dict(), _RESUME_FREE)
        if payload is None:
            return
        self.student.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        self.losses = [float(v) for v in payload["losses"]]
        self.metric_before = payload.get("metric_before")

    def export_bundle(self, directory: Path | None = None) -> Path:
        """Write the EMA student as a served bundle, with its metadata, and `metrics.json`."""
        directory = directory or self.out_dir / BUNDLE_SUBDIR
        if self.rank == 0:
            student: HunyuanVideoDiT = self.ema.model  # type: ignore[assignment]
            limits = dataclasses.replace(self.spec.limits, steps=self.export_limits_steps())
            spec = dataclasses.replace(self.spec, trained=True, limits=limits)
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
        self._barrier()
        return directory

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
