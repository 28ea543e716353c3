"""The generation request, shared by the CLI, the engine and the service.

`GenerationRequest` checks what can be checked without a model (types, ranges, the prompt); the
pipeline then resolves it against the served model's limits (`hyv.engine.limits`), so an impossible
size is refused with a clear message before any GPU work.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 4000


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

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty (only whitespace)")
        return value
