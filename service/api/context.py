"""What the routes share for the app's lifetime, and the `Annotated` dependencies that hand it out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.auth import Caller, KeyRing
from service.api.errors import NotFoundError
from service.api.ratelimit import SubmissionLimiter
from service.api.validation import ServedModel
from service.jobs import Job, JobStore
from service.settings import Settings
from service.storage import Storage


@dataclass
class AppContext:
    settings: Settings
    redis: Any  # redis.Redis (sync): every call is one loopback round trip
    store: JobStore
    storage: Storage
    model: ServedModel
    keyring: KeyRing
    limiter: SubmissionLimiter

    def owned_job(self, job_id: str, caller: Caller) -> Job:
        """The caller's job, or 404 (another key's job is indistinguishable from none)."""
        job = self.store.get(job_id) if job_id.startswith("video_") else None
        if job is None or job.owner != caller.owner:
            raise NotFoundError(f"no video {job_id!r} for this API key")
        return job

    def owned_job_with_position(self, job_id: str, caller: Caller) -> tuple[Job, int | None]:
        """owned_job and, while queued, the job's queue position: one Redis round trip (the status
        read, the hot path)."""
        found = self.store.get_with_position(job_id) if job_id.startswith("video_") else None
        if found is None or found[0].owner != caller.owner:
            raise NotFoundError(f"no video {job_id!r} for this API key")
        return found


# Dependencies are coroutines: FastAPI runs a plain `def` dependency in a worker thread, a hop that
# cost more than the whole status read.
async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]
