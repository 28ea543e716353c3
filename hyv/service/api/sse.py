"""GET /v1/videos/{id}/events: Server-Sent Events with the job's progress and its final state.

Each event's data is the same video object GET /v1/videos/{id} returns:

    id: 7
    event: video.progress          (queued or in progress; one per stored change: stage, step...)
    data: {"id": "video_...", "status": "in_progress", "progress": 42, ...}

and the stream ends after one `video.completed`, `video.failed` or `video.cancelled` event. The
first event is the current state, so a client that connects late (or reconnects) is never behind;
ids are the job's version counter and only increase. A comment line every few seconds keeps idle
connections (a job waiting in the queue) open through proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from hyv.service.api.auth import CallerDep
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.schemas import error_responses
from hyv.service.job_model import Job
from hyv.service.video_object import status_of, to_public

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])

KEEPALIVE_SECONDS = 10.0
RETRY_MS = 2000
FINAL = ("completed", "failed", "cancelled")


@router.get(
    "/videos/{video_id}/events",
    summary="Watch a video's progress (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'id: 3\nevent: video.progress\ndata: {"id": "video_...", "status": '
                    '"in_progress", "progress": 40, "stage": "denoise", "step": 5, "total_steps": 12}\n\n'
                }
            },
            "description": "video.progress events, then one of video.completed / failed / cancelled",
        },
        **error_responses(401, 404),
    },
)
async def video_events(video_id: str, caller: CallerDep, context: ContextDep) -> StreamingResponse:
    job = context.owned_job(video_id, caller)
    return StreamingResponse(
        _event_stream(context, job.id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def format_event(job: Job, queue_position: int | None) -> str:
    status = status_of(job)
    name = f"video.{status}" if status in FINAL else "video.progress"
    data = to_public(job, queue_position).model_dump_json()
    return f"id: {job.version}\nevent: {name}\ndata: {data}\n\n"


async def _event_stream(context: AppContext, job_id: str) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    events = context.events.stream(job_id)
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
            while not done:  # nothing new: keep the connection alive while we wait
                yield ": keep-alive\n\n"
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            job = Job.model_validate(event["job"])
            position = context.jobs.queue_position(job.id, job.model) if status_of(job) == "queued" else None
            yield format_event(job, position)
            if status_of(job) in FINAL:
                return
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()  # type: ignore[attr-defined]
