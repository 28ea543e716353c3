"""`LoRATrainConfig`: every knob of `hyv train lora`, validated up front.

The defaults train the demonstration adapter (`bouncing`) on the bundled 4-step student in about
seven minutes on 2 CPU cores: rank 8 on the blocks' attention and MLP projections, 256 cached
bouncing clips, batch 8, 800 steps at the student's three noisiest schedule sigmas, no prior
preservation (docs/training.md, "LoRA adapters", measures it).
Fields shared with the other trainers' configs (hyv.training.config_io.TrainConfig) mean the same
thing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.training.config_io import TrainConfig
from hyv.training.lora.adapter import DEFAULT_TARGETS

# "schedule": uniform over the sigmas the bundle samples at (a distilled student's fixed schedule,
# else its `limits.steps`-step shifted flow schedule), 0 excluded; "logit_normal": base training's
# shifted logit-normal draw.
TIMESTEP_SAMPLINGS = ("schedule", "logit_normal")
BOUNCING_TRIGGER = "a {color} {shape} bouncing on a {background} background"


@dataclass
class LoRATrainConfig(TrainConfig):
    out_dir: Path = Path("runs/lora/bouncing")
    base: Path = DEFAULT_BUNDLE_DIR  # the bundle whose DiT is adapted (frozen, with its VAE and text encoder)
    output: Path | None = None  # where the adapter goes; None: out_dir/adapter.safetensors
    # --- the adapter ---
    rank: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] = DEFAULT_TARGETS  # fnmatch globs over the DiT's Linear module paths
    # --- optimization (TrainConfig's fields, LoRA's defaults) ---
    steps: int = 800
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 20
    lr_schedule: str = "cosine"
    ema_decay: float = 0.0  # 0: the exported adapter is the last step's (no averaging)
    checkpoint_every: int = 100
    image_fraction: float = 0.0  # bouncing is a motion: videos only
    # --- noise levels ---
    timestep_sampling: str = "schedule"
    # Noise levels below this are not trained: schedule levels under it are skipped, logit-normal
    # draws are mapped into [min_sigma, 1]. See docs/training.md ("LoRA") for why.
    min_sigma: float = 0.8
    logit_mean: float = 0.0
    logit_std: float = 1.0
    guidance: float | None = None  # embedded guidance fed during training; None: the bundle's default
    # --- data: bouncing clips of the "bouncing_train" split, encoded once by the bundle's VAE ---
    cache_videos: int = 256
    # Prior preservation: this share of each batch are clips of the base model's own train split
    # (its captions, its motions) whose target is the frozen base model's prediction, so the
    # adapter changes what "bouncing" draws and leaves every other caption as it was.
    prior_fraction: float = 0.0
    prior_videos: int = 256  # base train clips cached for it

    def __post_init__(self) -> None:
        self.targets = tuple(str(t) for t in self.targets)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        self.check_int("rank", minimum=1)
        self.check("alpha", self.alpha > 0, "must be > 0")
        self.check("targets", len(self.targets) > 0, "must name at least one Linear module pattern")
        self.check_int("cache_videos", minimum=1)
        self.check_int("prior_videos", minimum=1)
        self.check("prior_fraction", 0.0 <= self.prior_fraction < 1.0, "must be in [0, 1)")
        if self.prior_fraction > 0 and round(self.batch_size * self.prior_fraction) == 0:
            self.fail("prior_fraction", f"gives no prior clip in a batch of {self.batch_size}")
        self.check_choice("timestep_sampling", TIMESTEP_SAMPLINGS)
        self.check("logit_std", self.logit_std > 0, "must be > 0")
        self.check("min_sigma", 0.0 <= self.min_sigma < 1.0, "must be in [0, 1)")
        if self.guidance is not None:
            self.check("guidance", self.guidance >= 0, "must be >= 0")
        if self.image_fraction != 0.0:
            self.fail("image_fraction", "must be 0: the adapter learns a motion, from videos only")
        if self.num_frames < 5:
            self.fail("num_frames", "must be >= 5: a bounce needs frames to fall and rise")

    @property
    def adapter_path(self) -> Path:
        return self.output if self.output is not None else self.out_dir / "adapter.safetensors"
