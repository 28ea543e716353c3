"""A job as the public video object (OpenAI's video object plus our fields): what the video routes,
the SSE feed and the webhooks send. Outside hyv.service.api so the worker (webhooks) can build it
without importing FastAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from hyv.service.job_model import Job, Operation, Stage

VideoStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class VideoError(BaseModel):
    code: str = Field(examples=["generation_failed"])
    message: str


class VideoPublic(BaseModel):
    """A video job. The first block of fields is OpenAI's video object; the rest are ours."""

    id: str = Field(examples=["video_0123456789abcdef01234567"])
    object: Literal["video"] = "video"
    model: str = Field(examples=["hyv-small"])
    status: VideoStatus
    progress: int = Field(ge=0, le=100, description="Approximate completion percentage.")
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    size: str = Field(description="The size rendered: one of the model's sizes.", examples=["64x64"])
    seconds: str = Field(description="The duration rendered: (num_frames - 1) / fps.", examples=["2"])
    prompt: str | None = None
    remixed_from_video_id: str | None = None
    error: VideoError | None = None

    operation: Operation = Field(
        default="create",
        description="create: from the prompt (and image); remix, edit: the source video re-noised and "
        "denoised with the prompt; extend: the source continued from its last frame, stitched in front.",
    )
    source_video_id: str | None = Field(
        default=None,
        description="The video a remix, edit or extension started from (null: an uploaded source).",
    )

    stage: Stage | None = Field(default=None, description="What the worker is doing now.")
    step: int = Field(default=0, description="Step within the stage (denoise: the sampler step).")
    total_steps: int = Field(default=0, description="Steps of the stage.")
    queue_position: int | None = Field(
        default=None, description="1 = the next job to run; only while queued."
    )
    started_at: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    guidance: float | None = Field(default=None, description="Guidance scale (the model's guidance_mode).")
    seed: int | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per finished stage.")
    content_bytes: int = Field(default=0, description="Size of the MP4 written so far.")
    step_cache: dict[str, Any] | None = Field(
        default=None,
        description="Step caching once finished: mode, threshold, and the block-stack evaluations "
        "computed and skipped (docs/step_cache.md).",
        examples=[{"mode": "teacache", "threshold": 0.1, "computed": 20, "skipped": 30}],
    )
    requested_size: str | None = Field(
        default=None,
        description="The size the request asked for ('WxH'); `size` is the model's size it was mapped "
        "to (the nearest aspect ratio). null if the request sent none.",
        examples=["1280x720"],
    )
    requested_seconds: str | None = Field(
        default=None,
        description="The seconds the request asked for; `seconds` is the model's length it was mapped "
        "to (the nearest duration). null if the request sent none.",
        examples=["8"],
    )
    loras: list[dict[str, Any]] = Field(
        default_factory=list, description="The LoRA adapters the video is made with: name and scale."
    )


def status_of(job: Job) -> str:
    return str(getattr(job.status, "value", job.status))


def to_public(job: Job, queue_position: int | None = None) -> VideoPublic:
    status = status_of(job)
    error = None
    if job.error_code or job.error_message:
        error = VideoError(code=job.error_code or "error", message=job.error_message or "")
    request: dict[str, Any] = job.request or {}
    return VideoPublic(
        id=job.id,
        model=job.model,
        status=status,  # type: ignore[arg-type]
        progress=int(job.progress or 0),
        created_at=int(job.created_at),
        completed_at=_int_or_none(job.completed_at),
        expires_at=_int_or_none(job.expires_at),
        size=job.size,
        seconds=str(job.seconds),
        prompt=job.prompt,
        remixed_from_video_id=job.source_video_id if job.operation == "remix" else None,
        error=error,
        operation=job.operation,
        source_video_id=job.source_video_id,
        stage=job.stage,
        step=job.step,
        total_steps=job.total_steps,
        queue_position=queue_position if status == "queued" else None,
        started_at=_int_or_none(job.started_at),
        num_frames=job.num_frames,
        fps=job.fps,
        steps=request.get("steps"),
        guidance=request.get("guidance"),
        seed=request.get("seed"),
        timings=dict(job.timings or {}),
        content_bytes=job.content_bytes,
        step_cache=job.step_cache,
        requested_size=job.requested_size,
        requested_seconds=job.requested_seconds,
        loras=list(request.get("loras") or []),
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
