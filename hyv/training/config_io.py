"""`ConfigIO`: the dict round trip every training config (a dataclass) shares, and `TrainConfig`,
the fields and checks the trainers' configs (hyv/training/{vae,dit,distill}/config.py) share.

`to_dict` gives what checkpoints and JSON files store (paths as strings, tuples as lists, as JSON
would turn them anyway, so a saved config and a fresh one compare equal on resume); `from_dict`
names any field it does not know instead of a bare TypeError from the constructor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self

from hyv.training.data.buckets import Bucket, parse_buckets


class ConfigIO:
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name, value in data.items():
            if isinstance(value, Path):
                data[name] = str(value)
            elif isinstance(value, tuple):
                data[name] = list(value)
        return data  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig(ConfigIO):
    """The fields every trainer's config has (each config sets its own defaults), validated here.

    Path-typed fields are converted from strings and `betas` to a float pair before `validate()`,
    so a config read back from JSON equals the one that was saved."""

    out_dir: Path = Path("runs")
    # --- optimization ---
    steps: int = 1000
    batch_size: int = 4  # per process
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100  # linear warmup from 0
    lr_schedule: str = "constant"  # after warmup: constant | cosine
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999  # warmed up as min(decay, (1 + step) / (10 + step))
    device: str | None = None  # None: cuda if available (cuda:LOCAL_RANK under torchrun), else cpu
    # --- data: clips of the synthetic train split ---
    num_frames: int = 17  # 4n + 1
    size: int = 64  # square, in pixels
    image_fraction: float = 0.2  # share of 1-frame images among the samples
    dataset_length: int = 100_000  # samples in the synthetic train split (indices drawn from it)
    # Shapes to train at, "WIDTHxHEIGHTxFRAMES" (hyv.training.data.buckets; frames 1 = images);
    # empty: `size` x `size` at `num_frames`, plus images at that size when image_fraction > 0.
    buckets: tuple[str, ...] = ()
    token_budget: int = 0  # > 0: a bucket's batch is as many clips as fit this many DiT tokens
    # --- bookkeeping ---
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest N checkpoints kept; 0 keeps all
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in out_dir/checkpoints
    progress: bool = True  # progress bar (rank 0)

    # `size` must be a multiple of this; the reason, for the error message
    SIZE_MULTIPLE: ClassVar[int] = 16
    SIZE_WHY: ClassVar[str] = "8x VAE downsampling, 2x2 patches"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if "Path" in str(field.type) and value is not None and not isinstance(value, Path):
                setattr(self, field.name, Path(value))
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.buckets = tuple(str(b) for b in self.buckets)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (subclasses check their own fields after these)."""
        for name in ("steps", "batch_size", "num_frames", "size", "checkpoint_every", "dataset_length"):
            self.check_int(name, minimum=1)
        for name in ("warmup_steps", "keep_checkpoints", "seed"):
            self.check_int(name, minimum=0)
        if (self.num_frames - 1) % 4:
            self.fail("num_frames", "must be 4n+1 (1, 5, 9, 17, ...)")
        if self.size % self.SIZE_MULTIPLE:
            self.fail("size", f"must be a multiple of {self.SIZE_MULTIPLE} ({self.SIZE_WHY})")
        self.check("lr", self.lr > 0, "must be > 0")
        self.check("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas))
        self.check("grad_clip", self.grad_clip >= 0, "must be >= 0")
        self.check("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1)")
        self.check_fraction("image_fraction")
        self.check_choice("lr_schedule", LR_SCHEDULES)
        self.check_int("token_budget", minimum=0)
        try:
            buckets = self.train_buckets()
        except ValueError as exc:
            self.fail("buckets", f"is invalid: {exc}")
        images = [b for b in buckets if b.is_image]
        if not self.buckets:  # the implicit ones follow num_frames and image_fraction
            return
        if self.image_fraction > 0 and not images:
            self.fail("buckets", f"has no image bucket (frames 1) but image_fraction={self.image_fraction}")
        if images and self.image_fraction == 0:
            self.fail("buckets", "has image buckets (frames 1) that image_fraction=0 never draws")
        if len(images) == len(buckets) and self.image_fraction < 1:
            self.fail("buckets", f"has no video bucket but image_fraction={self.image_fraction} < 1")

    def train_buckets(self) -> tuple[Bucket, ...]:
        """The buckets to train at, videos first (see `buckets`)."""
        if self.buckets:
            found = parse_buckets(self.buckets)
        else:
            found = (Bucket(self.size, self.size, self.num_frames),)
            if self.image_fraction > 0 and self.num_frames > 1:
                found += (Bucket(self.size, self.size, 1),)
        return tuple(b for b in found if not b.is_image) + tuple(b for b in found if b.is_image)

    # --- validation helpers, naming the field in every message ---

    def fail(self, name: str, why: str, value: object = None) -> NoReturn:
        value = getattr(self, name) if value is None else value
        raise ValueError(f"{type(self).__name__}.{name}={value!r} {why}")

    def check(self, name: str, ok: bool, why: str = "is out of range") -> None:
        if not ok:
            self.fail(name, why)

    def check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        self.check(name, ok, "must be a positive int" if minimum == 1 else f"must be an int >= {minimum}")

    def check_fraction(self, name: str) -> None:
        self.check(name, 0.0 <= getattr(self, name) <= 1.0, "must be a fraction in [0, 1]")

    def check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        if getattr(self, name) not in allowed:
            self.fail(name, f"must be one of {list(allowed)}")
