"""Job -> the public video object (shared by the routes, SSE and webhooks; no FastAPI here)."""

from __future__ import annotations

from typing import Any

from hyv.service.api.schemas import VideoError, VideoPublic
from hyv.service.job_model import Job


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
        error=error,
        stage=job.stage,  # type: ignore[arg-type]
        step=job.step,
        total_steps=job.total_steps,
        queue_position=queue_position if status == "queued" else None,
        started_at=_int_or_none(job.started_at),
        num_frames=job.num_frames,
        fps=job.fps,
        steps=request.get("steps"),
        seed=request.get("seed"),
        timings=dict(job.timings or {}),
        content_bytes=job.content_bytes,
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
