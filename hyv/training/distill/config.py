"""`DistillConfig`: every knob of the two distillation stages, validated up front.

Both stages start from a *teacher bundle* (the DiT trained by `hyv/training/dit`, or the output of the
previous stage) and write a served bundle (`out_dir/bundle`). `DistillConfig.for_stage(stage, ...)`
fills the stage's defaults, tuned for the bundled model (the "small" DiT, 10M parameters when
they were set, 2.7M since; 64x64x17 clips = latents 16x5x8x8) on 2 CPU cores:

* **cfg** (~10 min): 2048 cached teacher samples (~1 min: one batched cond+uncond forward each),
  then 1500 steps of batch 8 (~0.3 s each on one core).
* **steps** (~15-20 min): 768 cached teacher trajectories of 24 Euler steps (~4 min with an
  embedded-guidance teacher, twice that with true CFG), then 2000 steps of batch 8.

Fields shared with `DiTTrainConfig` mean the same thing there (seed, sizes, image/I2V fractions,
timestep sampling, checkpointing, resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyv.training.config_io import ConfigIO

STAGES = ("cfg", "steps")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
LR_SCHEDULES = ("constant", "cosine")
_PATH_FIELDS = ("teacher", "out_dir")

# Per-stage defaults that differ from the dataclass defaults (which are the cfg stage's).
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cfg": {"steps": 1500, "teacher_samples": 2048},
    "steps": {"steps": 2000, "teacher_samples": 768, "lr": 1e-4},
}


@dataclass
class DistillConfig(ConfigIO):
    teacher: Path = Path("runs/dit/bundle")  # the teacher bundle directory
    out_dir: Path = Path("runs/distill/cfg")
    stage: str = "cfg"  # cfg | steps
    # --- optimization (the student starts as a copy of the teacher DiT; all of it is trained) ---
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # after warmup: constant | cosine (to 0 at `steps`)
    steps: int = 1500
    batch_size: int = 8  # per process
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.995
    device: str | None = None  # None: cuda:LOCAL_RANK if available, else cpu
    # --- data: clips of the synthetic train split, encoded once by the teacher's VAE ---
    num_frames: int = 17  # 4n + 1
    size: int = 64
    dataset_length: int = 100_000
    cache_videos: int = 256  # clips in the latent cache (captions, x0, I2V first frames)
    cache_images: int = 64
    image_fraction: float = 0.2  # share of teacher samples / trajectories that are 1-frame images
    i2v_fraction: float = 0.3  # video samples conditioned on their first latent frame
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
    # --- bookkeeping ---
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.validate()

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

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.stage not in STAGES:
            _fail("stage", self.stage, f"must be one of {list(STAGES)}")
        positive = (
            "steps",
            "batch_size",
            "num_frames",
            "size",
            "dataset_length",
            "cache_videos",
            "teacher_samples",
            "eval_samples",
            "teacher_batch",
            "checkpoint_every",
            "student_steps",
            "teacher_steps",
        )
        for name in positive:
            value = getattr(self, name)
            _check(name, value, isinstance(value, int) and not isinstance(value, bool) and value > 0)
        for name in ("warmup_steps", "keep_checkpoints", "seed", "cache_images"):
            value = getattr(self, name)
            _check(name, value, isinstance(value, int) and value >= 0)
        if (self.num_frames - 1) % 4:
            _fail("num_frames", self.num_frames, "must be 4n+1 (1, 5, 9, 17, ...)")
        if self.size % 16:
            _fail("size", self.size, "must be a multiple of 16 (8x VAE downsampling, 2x2 patches)")
        _check("lr", self.lr, self.lr > 0)
        _check("weight_decay", self.weight_decay, self.weight_decay >= 0)
        _check("betas", self.betas, len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas))
        _check("grad_clip", self.grad_clip, self.grad_clip >= 0)
        _check("ema_decay", self.ema_decay, 0 <= self.ema_decay < 1)
        _check("logit_std", self.logit_std, self.logit_std > 0)
        if self.flow_shift is not None:
            _check("flow_shift", self.flow_shift, self.flow_shift > 0)
        if self.student_shift is not None:
            _check("student_shift", self.student_shift, self.student_shift > 0)
        for name in ("guidance_min", "guidance_max"):
            value = getattr(self, name)
            if value is not None:
                _check(name, value, value >= 0)
        if self.guidance_min is not None and self.guidance_max is not None:
            _check("guidance_max", self.guidance_max, self.guidance_max >= self.guidance_min)
        for name in ("image_fraction", "i2v_fraction"):
            value = getattr(self, name)
            _check(name, value, 0.0 <= value <= 1.0, "must be a probability in [0, 1]")
        if self.image_fraction > 0 and self.cache_images == 0:
            _fail("cache_images", self.cache_images, f"must be > 0 when image_fraction={self.image_fraction}")
        if self.student_steps > 6:
            _fail("student_steps", self.student_steps, "must be <= 6 (the point of step distillation)")
        if self.teacher_steps % self.student_steps:
            _fail(
                "teacher_steps",
                self.teacher_steps,
                f"must be a multiple of student_steps={self.student_steps} (phase boundaries on the "
                "teacher's schedule)",
            )
        for name, allowed in (("timestep_sampling", TIMESTEP_SAMPLINGS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                _fail(name, getattr(self, name), f"must be one of {list(allowed)}")


def _fail(name: str, value: object, why: str) -> None:
    raise ValueError(f"DistillConfig.{name}={value!r} {why}")


def _check(name: str, value: object, ok: bool, why: str = "is out of range") -> None:
    if not ok:
        _fail(name, value, why)
