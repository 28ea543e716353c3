"""The API's request and response models, shaped after OpenAI's Videos API plus our own fields.

`VideoCreate` is the body of POST /v1/videos in both encodings (multipart/form-data, which the
OpenAI SDK sends, and JSON); `VideoPublic` (hyv.service.video_object) is the video object every
video route returns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hyv.engine.prompt_vocabulary import CaptionGrammar
from hyv.engine.request import MAX_LORAS, LoraChoice
from hyv.engine.step_cache import StepCacheConfig
from hyv.service.video_object import VideoPublic, VideoStatus

_CREATE_EXAMPLE: dict[str, Any] = {
    "prompt": "a red circle moving left on a black background",
    "size": "64x64",
    "num_frames": 17,
    "seed": 42,
}


class ImageReference(BaseModel):
    """OpenAI's reference object; we take `image_url` as a base64 data URL (no remote fetches)."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(default=None, description="data:image/png;base64,... (data URLs only)")
    file_id: str | None = Field(default=None, description="Not supported: upload the image instead.")


class VideoCreate(BaseModel):
    """What to generate. Omitted fields take the served model's defaults (GET /v1/models)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CREATE_EXAMPLE]})

    prompt: str = Field(
        description="What the video shows. A model with the built-in text encoder takes only the words of "
        "its vocabulary (GET /v1/models).",
        examples=[_CREATE_EXAMPLE["prompt"]],
    )
    model: str | None = Field(
        default=None,
        description="One of the served models' ids (GET /v1/models); omitted = the first (default).",
    )
    seconds: str | None = Field(
        default=None,
        description="Clip length in seconds (a number as text, like OpenAI's '4', '8', '12'), mapped to the "
        "model's length of the nearest duration; num_frames wins.",
        examples=["2"],
    )
    size: str | None = Field(
        default=None,
        description="'WIDTHxHEIGHT'. A model with fixed sizes (GET /v1/models) renders the one of the "
        "nearest aspect ratio (OpenAI's '1280x720' -> '96x64' on hyv-small); the video says which.",
        examples=["64x64"],
    )
    input_reference: str | ImageReference | None = Field(
        default=None,
        description="Image for image-to-video: a file part in multipart, a data URL (or "
        "{'image_url': data URL}) in JSON.",
    )
    negative_prompt: str | None = Field(default=None, description="What to steer away from.")
    num_frames: int | None = Field(
        default=None, description="Frame count, 4n+1, one of the model's frame_counts; wins over seconds."
    )
    fps: int | None = Field(default=None, description="Frames per second of the MP4.")
    steps: int | None = Field(default=None, description="Denoising steps.")
    guidance: float | None = Field(default=None, description="Guidance scale.")
    seed: int | None = Field(default=None, description="Random seed; omitted = random, reported back.")
    cache: StepCacheConfig | None = Field(
        default=None,
        description="Step caching (an extension): 'off', 'teacache' or 'first_block', or "
        "{'mode': ..., 'threshold': ...}; omitted = the server's default. The finished video reports "
        "the block-stack evaluations computed and skipped (`step_cache`).",
        examples=["teacache", {"mode": "first_block", "threshold": 0.1}],
    )
    webhook_url: str | None = Field(
        default=None, description="POSTed a signed video.completed / video.failed event when the job ends."
    )
    loras: list[LoraChoice] | None = Field(
        default=None,
        max_length=MAX_LORAS,
        description="LoRA adapters for this video, by name (GET /v1/models lists them), each with a scale "
        "(default 1.0); several add up. Multipart (the OpenAI SDK's extra_body): `loras[][name]` and "
        "`loras[][scale]` fields in order, or one `loras` field holding the JSON list.",
        examples=[[{"name": "bouncing", "scale": 1.0}]],
    )


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoPublic]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    """OpenAI's delete response. A queued or running job is cancelled first (`status` says so); a
    finished one is removed with its files (`deleted` true)."""

    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool
    status: VideoStatus | None = None


class CaptionGrammarPublic(BaseModel):
    """The captions a model with the built-in text encoder was trained on."""

    template: str = Field(examples=["a {color} {shape} {motion} on a {background} background"])
    slots: dict[str, list[str]] = Field(
        description="The values each {slot} of the template takes.",
        examples=[{"color": ["red", "green"], "shape": ["circle", "square"]}],
    )
    example: str = Field(examples=["a red circle moving left on a black background"])

    @classmethod
    def of(cls, grammar: CaptionGrammar) -> CaptionGrammarPublic:
        return cls(
            template=grammar.template,
            slots={slot: list(values) for slot, values in grammar.slots.items()},
            example=grammar.example(),
        )


GuidanceMode = Literal["embedded", "true_cfg"]


class ModelPublic(BaseModel):
    """One served model (GET /v1/models lists every one, the default first): OpenAI's model object
    plus what a request may ask of it."""

    id: str = Field(examples=["hyv-small"])
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hyvideo-serve"
    supports_image: bool = Field(description="Accepts an input image (image-to-video).")
    requires_image: bool = False
    defaults: dict[str, float | int] = Field(description="Values used for omitted fields.")
    max_width: int
    max_height: int
    max_frames: int
    max_steps: int
    fixed_steps: int | None = Field(default=None, description="A step-distilled model's only step count.")
    guidance_mode: GuidanceMode | None = Field(
        default=None,
        description="embedded = guidance distilled into the DiT (one forward per step); true_cfg = "
        "classifier-free guidance with the negative prompt (two forwards per step).",
    )
    sizes: list[str] | None = Field(default=None, description="Allowed sizes; null = any multiple of 16.")
    frame_counts: list[int] | None = Field(
        default=None, description="Allowed frame counts (num_frames); null = any 4n+1 up to max_frames."
    )
    vocabulary: list[str] | None = Field(
        default=None,
        description="The words the model's built-in text encoder knows (sorted); prompts with other "
        "words are refused. null = any text (a LLaMA/CLIP text encoder).",
    )
    grammar: CaptionGrammarPublic | None = Field(
        default=None, description="The caption grammar the model was trained on (built-in text encoder)."
    )
    loras: list[str] = Field(default_factory=list, description="LoRA adapters requests may name (`loras`).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_value"])
    message: str = Field(examples=["num_frames 18 is not one of this model's lengths: 17 frames"])
    param: str | None = Field(default=None, examples=["num_frames"])
    type: str = Field(default="invalid_request_error")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` entries for the given error statuses."""
    descriptions = {
        401: "Missing or invalid API key",
        404: "No such video for this API key",
        409: "ConflictError (idempotency key reused with another body, or content not available)",
        413: "Body or upload too large",
        422: "Invalid value (the message names the field and the value)",
        429: "Rate limit or queued-job cap reached (see Retry-After)",
        501: "Not supported by this server (the message names the feature)",
        503: "Not ready",
    }
    return {code: {"model": ErrorResponse, "description": descriptions.get(code, "Error")} for code in codes}
