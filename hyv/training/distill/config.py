"""`DistillConfig`: every knob of the two distillation stages, validated up front.

Both stages start from a *teacher bundle* (the DiT trained by `hyv/training/dit`, or the output of the
previous stage) and write a served bundle (`out_dir/bundle`). `DistillConfig.for_stage(stage, ...)`
fills the stage's defaults, tuned for the bundled model (a "small" DiT of 2.7M-10M parameters;
64x64x17 clips = latents 16x5x8x8) on 2 CPU cores:

* **cfg** (~10 min): 2048 cached teacher samples (~1 min: one batched cond+uncond forward each),
  then 1500 steps of batch 8 (~0.3 s each on one core).
* **steps** (~15-20 min): 768 cached teacher trajectories of 24 Euler steps (~4 min with an
  embedded-guidance teacher, twice that with true CFG), then 2000 steps of batch 8.

Fields shared with `DiTTrainConfig` mean the same thing there (seed, sizes, image/I2V fractions,
continuations, timestep sampling, checkpointing, resume). With `continuation_fraction` > 0 the steps
stage's teacher also continues that share of the video trajectories' continuation clips
(image-to-video from their first frame), so the student learns extending from the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyv.training.config_io import TrainConfig
from hyv.training.dit.config import check_continuations

STAGES = ("cfg", "steps")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")

# Per-stage defaults that differ from the dataclass defaults (which are the cfg stage's).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cfg": {"steps": 1500, "teacher_samples": 2048},
    "steps": {"steps": 2000, "teacher_samples": 768, "lr": 1e-4},
}


@dataclass
class DistillConfig(TrainConfig):
    # --- shared fields (hyv.training.config_io.TrainConfig), with distillation's defaults; the
    # student starts as a copy of the teacher DiT and all of it is trained ---
    out_dir: Path = Path("runs/distill/cfg")
    steps: int = 1500
    batch_size: int = 8  # per process
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # after warmup: constant | cosine (to 0 at `steps`)
    ema_decay: float = 0.995
    checkpoint_every: int = 250
    teacher: Path = Path("runs/dit/bundle")  # the teacher bundle directory
    stage: str = "cfg"  # cfg | steps
    weight_decay: float = 0.0
    # --- data: clips of the synthetic train split, encoded once by the teacher's VAE ---
    latent_cache: Path | None = None  # an earlier stage's latent cache file to reuse (same VAE and buckets)
    cache_videos: int = 256  # clips in the latent cache (captions, x0, I2V first frames)
    cache_images: int = 64
    i2v_fraction: float = 0.3  # video samples conditioned on their first latent frame
    # steps stage: that share of the video trajectories continues a continuation clip's first frame
    continuation_fraction: float = 0.0
    cache_continuations: int = 0  # continuation clips per video bucket in the latent cache
    continuation_starts: tuple[float, float] = (0.4, 1.0)  # clip times they start at
    # buckets drawn in proportion to (batch_size / clips per batch) ** bucket_balance (within the
    # images and within the videos): 0 draws each equally often; more gives the large buckets (few
    # clips a batch) more steps
    bucket_balance: float = 0.0
    # --- teacher cache ---
    teacher_samples: int = 2048  # cfg: noisy latents with teacher velocities; steps: trajectories
    eval_samples: int = 32  # held-out teacher samples for the before/after metric
    teacher_batch: int = 32  # samples per teacher forward while building the cache
    # --- guidance: drawn uniformly per sample; None = the stage's default ---
    guidance_min: float | None = None  # cfg: 1.0; steps: the bundle's default guidance
    guidance_max: float | None = None  # cfg: 8.0; steps: the bundle's default guidance
    # --- cfg stage: where the noisy latents are (as in base training) ---
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float | None = None  # None: the teacher bundle's limits.flow_shift
    # --- steps stage ---
    student_steps: int = 4  # <= 6; its schedule is flow_schedule(student_steps, student_shift)
    student_shift: float | None = None  # the student schedule's shift; None: flow_shift
    teacher_steps: int = 24  # the teacher's Euler steps per trajectory; a multiple of student_steps

    @classmethod
    def for_stage(cls, stage: str, **fields: Any) -> DistillConfig:
        """A config with the stage's defaults; `fields` (None values ignored) override them."""
        if stage not in STAGES:
            raise ValueError(f"DistillConfig.stage={stage!r} must be one of {list(STAGES)}")
        values = {**STAGE_DEFAULTS[stage], **{k: v for k, v in fields.items() if v is not None}}
        return cls(stage=stage, **values)

    def guidance_range(self, bundle_guidance: float) -> tuple[float, float]:
        """(min, max) guidance drawn per sample, with the stage's defaults filled in."""
        if self.stage == "cfg":
            low, high = 1.0, 8.0
        else:
            low = high = bundle_guidance
        low = self.guidance_min if self.guidance_min is not None else low
        high = self.guidance_max if self.guidance_max is not None else max(high, low)
        if high < low:
            raise ValueError(f"DistillConfig.guidance_max={high} is below guidance_min={low}")
        return low, high

    def __post_init__(self) -> None:
        self.continuation_starts = (float(self.continuation_starts[0]), float(self.continuation_starts[1]))
        super().__post_init__()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        self.check_choice("stage", STAGES)
        super().validate()
        check_continuations(self)
        if not 0.0 <= self.bucket_balance <= 1.0:
            self.fail("bucket_balance", "must be in [0, 1]")
        if self.continuation_fraction > 0 and self.stage != "steps":
            self.fail(
                "continuation_fraction", "must be 0 in the cfg stage (the steps stage distills continuations)"
            )
        for name in (
            "cache_videos",
            "teacher_samples",
            "eval_samples",
            "teacher_batch",
            "student_steps",
            "teacher_steps",
        ):
            self.check_int(name, minimum=1)
        self.check_int("cache_images", minimum=0)
        self.check("weight_decay", self.weight_decay >= 0)
        self.check("logit_std", self.logit_std > 0)
        if self.flow_shift is not None:
            self.check("flow_shift", self.flow_shift > 0)
        if self.student_shift is not None:
            self.check("student_shift", self.student_shift > 0)
        for name in ("guidance_min", "guidance_max"):
            value = getattr(self, name)
            if value is not None:
                self.check(name, value >= 0)
        if self.guidance_min is not None and self.guidance_max is not None:
            self.check("guidance_max", self.guidance_max >= self.guidance_min)
        self.check_fraction("i2v_fraction")
        if self.image_fraction > 0 and self.cache_images == 0:
            self.fail("cache_images", f"must be > 0 when image_fraction={self.image_fraction}")
        if self.student_steps > 6:
            self.fail("student_steps", "must be <= 6 (the point of step distillation)")
        if self.teacher_steps % self.student_steps:
            self.fail(
                "teacher_steps",
                f"must be a multiple of student_steps={self.student_steps} (phase boundaries on the "
                "teacher's schedule)",
            )
        self.check_choice("timestep_sampling", TIMESTEP_SAMPLINGS)
