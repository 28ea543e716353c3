"""Sizes a model can serve: the request -> concrete plan resolution with clear errors.

Width and height are multiples of 16 (8x VAE downsampling, then 2x2 patches); frame counts are 4n+1
(4x causal temporal compression). The 13B model serves HunyuanVideo's resolution buckets only.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hyv.engine.request import GenerationRequest, LoraChoice, VideoMode
from hyv.engine.step_cache.config import StepCacheConfig

if TYPE_CHECKING:
    import numpy as np

SIZE_MULTIPLE = 16
TIME_STRIDE = 4
# An edit (and a remix) re-runs the schedule from the first sigma at or below this: high enough that
# a new prompt can change colour and shape, low enough that the source's layout and motion survive
# (measured on hyv-small: docs/api.md, "Remix and edits").
DEFAULT_EDIT_STRENGTH = 0.95

# HunyuanVideo's official buckets as (width, height): 9:16, 16:9, 4:3, 3:4, 1:1.
BUCKETS_540P: tuple[tuple[int, int], ...] = ((544, 960), (960, 544), (832, 624), (624, 832), (720, 720))
BUCKETS_720P: tuple[tuple[int, int], ...] = ((720, 1280), (1280, 720), (1104, 832), (832, 1104), (960, 960))


@dataclass(frozen=True)
class ModelLimits:
    """Defaults for omitted fields and the bounds a request must stay within."""

    width: int = 128
    height: int = 128
    num_frames: int = 17
    fps: int = 8
    steps: int = 12
    flow_shift: float = 5.0
    guidance: float = 6.0
    max_width: int = 512
    max_height: int = 512
    max_frames: int = 65
    max_steps: int = 100
    buckets: tuple[tuple[int, int], ...] | None = None  # allowed (width, height); None = any
    requires_image: bool = False  # an image-to-video-only model (e.g. HunyuanVideo-I2V)
    # Allowed frame counts (the lengths the model was trained and evaluated at); None = any 4n+1
    # up to max_frames. A model trained at one length draws black leading frames at others.
    frame_counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.buckets is not None:  # JSON gives lists
            object.__setattr__(self, "buckets", tuple((int(w), int(h)) for w, h in self.buckets))
        if self.frame_counts is not None:
            counts = tuple(sorted({int(n) for n in self.frame_counts}))
            bad = [n for n in counts if (n - 1) % TIME_STRIDE or not 1 <= n <= self.max_frames]
            if not counts or bad:
                raise ValueError(
                    f"frame_counts must be 4n+1 in [1, {self.max_frames}] (max_frames), "
                    f"got {list(self.frame_counts)}"
                )
            if self.num_frames not in counts:
                raise ValueError(
                    f"the default num_frames {self.num_frames} is not in frame_counts {list(counts)}"
                )
            object.__setattr__(self, "frame_counts", counts)

    def sizes_text(self) -> str:
        """The allowed sizes, e.g. '64x64, 96x64' (buckets only)."""
        return ", ".join(f"{w}x{h}" for w, h in self.buckets or ())

    def lengths_text(self) -> str:
        """The allowed frame counts, e.g. '1, 17, 33 frames' (frame_counts only)."""
        return f"{', '.join(str(n) for n in self.frame_counts or ())} frames"


@dataclass(frozen=True)
class GenerationPlan:
    """A request resolved against a model: every value concrete and valid."""

    prompt: str
    negative_prompt: str
    image: bytes | None
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance: float
    flow_shift: float
    seed: int
    video: bytes | None = None  # the source video of an edit or extension (hyv.engine.source_video)
    video_mode: VideoMode | None = None
    strength: float = 1.0  # edit: the fraction of the schedule re-run
    source_frames: int = 0  # frames of the source video (set once the engine has decoded it)
    loras: tuple[LoraChoice, ...] = ()  # LoRA adapters applied for this job (hyv.engine.lora)
    # The source's frames the engine uses, fitted to width x height, (T, H, W, 3) uint8: an edit's
    # first num_frames, or every frame of an extension's source (decoded once, at planning).
    source: np.ndarray | None = field(default=None, repr=False, compare=False)
    cache: StepCacheConfig | None = None  # None: the pipeline's default (hyv.engine.step_cache)

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // TIME_STRIDE + 1

    @property
    def output_frames(self) -> int:
        """Frames of the video made: an extension's source (but its last frame, which the new
        segment's first redraws) in front of the `num_frames` generated."""
        if self.video_mode == "extend" and self.source_frames:
            return self.source_frames - 1 + self.num_frames
        return self.num_frames


def resolve(
    request: GenerationRequest, limits: ModelLimits, fixed_steps: int | None = None
) -> GenerationPlan:
    """Fill defaults and check the request against the model; ValueError names the offending field.

    fixed_steps: a step-distilled student's step count (its schedule is fixed by training).
    """
    if limits.requires_image and request.image is None:
        raise ValueError("image is required: this model is image-to-video only")
    width = request.width if request.width is not None else limits.width
    height = request.height if request.height is not None else limits.height
    frames = request.num_frames if request.num_frames is not None else limits.num_frames
    for name, value, upper in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= upper:
            sizes = f" (this model's sizes: {limits.sizes_text()})" if limits.buckets else ""
            raise ValueError(
                f"{name} must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MULTIPLE}, {upper}], "
                f"got {value}{sizes}"
            )
    if limits.buckets is not None and (width, height) not in limits.buckets:
        raise ValueError(
            f"size {width}x{height} is not one of this model's resolution buckets: {limits.sizes_text()}"
        )
    if limits.frame_counts is not None and frames not in limits.frame_counts:
        raise ValueError(f"num_frames {frames} is not one of this model's lengths: {limits.lengths_text()}")
    if (frames - 1) % TIME_STRIDE or not 1 <= frames <= limits.max_frames:
        raise ValueError(f"num_frames must be 4n+1 in [1, {limits.max_frames}], got {frames}")
    steps = request.steps if request.steps is not None else (fixed_steps or limits.steps)
    if fixed_steps is not None and steps != fixed_steps:
        raise ValueError(
            f"steps: this step-distilled model samples in exactly {fixed_steps} steps, got {steps}"
        )
    if steps > limits.max_steps:
        raise ValueError(f"steps must be in [1, {limits.max_steps}], got {steps}")
    return GenerationPlan(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        image=request.image,
        width=width,
        height=height,
        num_frames=frames,
        fps=request.fps if request.fps is not None else limits.fps,
        steps=steps,
        guidance=request.guidance if request.guidance is not None else limits.guidance,
        flow_shift=request.flow_shift if request.flow_shift is not None else limits.flow_shift,
        seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        video=request.video,
        video_mode=request.video_mode,
        strength=request.strength if request.strength is not None else DEFAULT_EDIT_STRENGTH,
        loras=request.loras,
        cache=request.cache,
    )
