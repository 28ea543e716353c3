"""The generation request, shared by the CLI, the engine and the service.

`GenerationRequest` checks what can be checked without a model (types, ranges, the prompt); the
pipeline then resolves it against the served model's limits (`hyv.engine.limits`), so an impossible
size is refused with a clear message before any GPU work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hyv.engine.step_cache.config import StepCacheConfig

MAX_PROMPT_CHARS = 4000
MAX_LORAS = 8  # adapters in one request
LORA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a file stem in the LoRA folder, no path
VideoMode = Literal["edit", "extend"]


class LoraChoice(BaseModel):
    """One LoRA adapter for a request: a name from the served LoRA folder and its scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=LORA_NAME_PATTERN, description="The adapter's file name without .safetensors.")
    scale: float = Field(
        default=1.0, ge=-100.0, le=100.0, allow_inf_nan=False, description="0 = not applied."
    )


class GenerationRequest(BaseModel):
    """What to generate. Fields left as None take the served model's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What the video shows.")
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from (models with true CFG)."
    )
    image: bytes | None = Field(default=None, description="Encoded image (PNG/JPEG/...) for image-to-video.")
    width: int | None = Field(default=None, ge=16, le=4096)
    height: int | None = Field(default=None, ge=16, le=4096)
    num_frames: int | None = Field(default=None, ge=1, le=1024)
    fps: int | None = Field(default=None, ge=1, le=120)
    steps: int | None = Field(default=None, ge=1, le=1000)
    guidance: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    flow_shift: float | None = Field(default=None, gt=0.0, le=100.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="None: a random seed, reported back.")
    video: bytes | None = Field(
        default=None, description="Encoded source video (MP4, WebM, ...) for video_mode edit or extend."
    )
    video_mode: VideoMode | None = Field(
        default=None,
        description="edit: re-noise the source video and denoise it with the prompt (SDEdit); "
        "extend: continue the source from its last frame and return both, stitched.",
    )
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="edit: how much of the schedule is re-run (1 = from pure noise); None: the default.",
    )
    cache: StepCacheConfig | None = Field(
        default=None,
        description="Step caching: 'off', 'teacache' or 'first_block', or {'mode': ..., 'threshold': ...}; "
        "None: the server's default (hyv.engine.step_cache).",
    )

    loras: tuple[LoraChoice, ...] = Field(
        default=(),
        max_length=MAX_LORAS,
        description="LoRA adapters applied for this request; their deltas add up.",
    )

    @field_validator("loras")
    @classmethod
    def _loras_distinct(cls, value: tuple[LoraChoice, ...]) -> tuple[LoraChoice, ...]:
        names = [lora.name for lora in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"loras: {repeated} given more than once (one entry each; scales add up in one)")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty (only whitespace)")
        return value

    @model_validator(mode="after")
    def _source_video_consistent(self) -> GenerationRequest:
        if (self.video is None) != (self.video_mode is None):
            raise ValueError("video and video_mode come together: a source video needs a mode, and back")
        if self.strength is not None and self.video_mode != "edit":
            raise ValueError("strength applies to video_mode 'edit' only")
        if self.video_mode == "extend" and self.image is not None:
            raise ValueError("an extension is conditioned on its source's last frame: it takes no image")
        return self
