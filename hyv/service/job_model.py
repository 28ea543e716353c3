"""A video job as stored in Redis and shown by the API: `Job`, its status and its id.

hyv.service.job_records keeps these records (the Lua scripts get the status and event names from
here: hyv.service.job_scripts).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

JOB_ID_RE = re.compile(r"^video_[0-9a-f]{24}$")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
# The pub/sub / SSE event name of each status: "progress" while running, else the status itself.
EVENT_NAMES: dict[JobStatus, str] = {
    status: "progress" if status == JobStatus.IN_PROGRESS else status.value for status in JobStatus
}
Stage = Literal["text_encode", "denoise", "decode", "encode"]
# How a job's video comes about: from a prompt (and image), or from an earlier video (its source).
Operation = Literal["create", "remix", "edit", "extend"]


def new_job_id() -> str:
    return "video_" + secrets.token_hex(12)


def owner_for_key(api_key: str | None) -> str:
    """The owner of a key's jobs: its SHA-256 (the key itself is never stored), or "anonymous"."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else "anonymous"


class Job(BaseModel):
    id: str = Field(default_factory=new_job_id)
    owner: str = "anonymous"
    model: str
    status: JobStatus = JobStatus.QUEUED
    progress: int = Field(default=0, ge=0, le=100)
    stage: Stage | None = None
    step: int = 0
    total_steps: int = 0
    created_at: int = Field(default_factory=lambda: int(time.time()))
    started_at: int | None = None
    completed_at: int | None = None
    expires_at: int | None = None
    # GenerationRequest fields except `image` (the image lives in storage: save_input_image).
    request: dict[str, Any] = Field(default_factory=dict)
    prompt: str = ""
    size: str = ""  # "WxH"
    seconds: str = ""  # duration as the OpenAI API writes it ("4")
    # OpenAI's size and seconds as the request sent them, before they were mapped onto the model's
    # sizes and lengths (hyv.service.api.validation); None where the request left them out.
    requested_size: str | None = None
    requested_seconds: str | None = None
    num_frames: int = 0
    fps: int = 0
    error_code: str | None = None
    error_message: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # stage -> seconds
    # hyv.engine.step_cache: mode, threshold, block-stack evaluations computed and skipped
    step_cache: dict[str, Any] | None = None
    attempts: int = 0
    worker: str | None = None
    content_bytes: int = 0
    webhook_url: str | None = None
    operation: Operation = "create"
    source_video_id: str | None = None  # the earlier job a remix, edit or extension starts from
    version: int = 0  # bumped by every write

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def event(self) -> dict[str, Any]:
        """The pub/sub / SSE event for this state: event = "progress" while running, else the status."""
        return {"event": EVENT_NAMES[self.status], "job": self.model_dump(mode="json")}


JOB_FIELDS = frozenset(Job.model_fields)
