"""What the routes share for the app's lifetime, and the `Annotated` dependencies that hand it out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from hyv.service.api.auth import Caller, KeyRing
from hyv.service.api.errors import NotFoundError
from hyv.service.api.model_catalog import ModelCatalog
from hyv.service.api.ratelimit import SubmissionLimiter
from hyv.service.api.validation import ServedModel
from hyv.service.idempotency import IdempotencyKeys
from hyv.service.job_cancels import CancelRequests
from hyv.service.job_events import JobEvents
from hyv.service.job_model import Job
from hyv.service.job_records import JobRecords
from hyv.service.settings import Settings
from hyv.service.storage import Storage
from hyv.service.worker_registry import WorkerRegistry

ReadResult = tuple[Job, int | None] | None


class BatchedStatusReads:
    """Status reads that arrive in the same turn of the event loop share one Redis round trip (a
    pipeline): with many clients polling, the loop waits on Redis once per batch instead of once per
    request. One pending batch per event loop."""

    def __init__(self, jobs: JobRecords) -> None:
        self.jobs = jobs
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[str, asyncio.Future[ReadResult]]]] = {}

    async def get_with_position(self, job_id: str) -> ReadResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReadResult] = loop.create_future()
        batch = self._pending.setdefault(loop, [])
        batch.append((job_id, future))
        if len(batch) == 1:  # the first of this turn: read them all once the turn's requests are in
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        try:
            # A blocking call, once per batch: the requests of this turn all wait for it anyway,
            # and on loopback it costs less CPU than an asyncio client's round trip.
            results = self.jobs.get_many_with_position([job_id for job_id, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its request may have been cancelled meanwhile
                future.set_result(result)


@dataclass
class AppContext:
    settings: Settings
    redis: Any  # redis.Redis (sync): every call is one loopback round trip
    # The parts of the job store (hyv.service.job_store) the routes use:
    jobs: JobRecords
    cancels: CancelRequests
    idempotency: IdempotencyKeys
    workers: WorkerRegistry
    events: JobEvents
    storage: Storage
    models: ModelCatalog  # the served models, the default first
    keyring: KeyRing
    limiter: SubmissionLimiter
    status_reads: BatchedStatusReads = field(init=False)

    def __post_init__(self) -> None:
        self.status_reads = BatchedStatusReads(self.jobs)

    @property
    def model(self) -> ServedModel:
        """The default model (a request without `model`)."""
        return self.models.default

    @model.setter
    def model(self, model: ServedModel) -> None:
        self.models.default = model

    def owned_job(self, job_id: str, caller: Caller) -> Job:
        """The caller's job, or 404 (another key's job is indistinguishable from none)."""
        job = self.jobs.get(job_id) if job_id.startswith("video_") else None
        if job is None or job.owner != caller.owner:
            raise NotFoundError(f"no video {job_id!r} for this API key")
        return job

    async def owned_job_with_position(self, job_id: str, caller: Caller) -> tuple[Job, int | None]:
        """owned_job and, while queued, the job's queue position: the status read, the hot path
        (one Redis round trip, shared with the other reads of the same loop turn)."""
        found = await self.status_reads.get_with_position(job_id) if job_id.startswith("video_") else None
        if found is None or found[0].owner != caller.owner:
            raise NotFoundError(f"no video {job_id!r} for this API key")
        return found


# Dependencies are coroutines: FastAPI runs a plain `def` dependency in a worker thread, a hop that
# cost more than the whole status read.
async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]
