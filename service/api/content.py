"""GET /v1/videos/{id}/content: the MP4 (or its first-frame thumbnail).

- Completed: the file, with Range / 206 / If-Range (Starlette's FileResponse), a strong ETag
  (`If-None-Match` -> 304) and Content-Length.
- Queued or in progress: a chunked stream of the fragmented MP4 from its first byte, following
  the worker's growing `.part` file until the job completes, so a client that starts early still
  receives the whole playable file. If the job fails or is cancelled meanwhile the connection is
  cut without the closing chunk, so the client sees an incomplete body rather than a short file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from service.api.auth import CallerDep
from service.api.context import AppContext, ContextDep
from service.api.errors import ConflictError, InvalidRequestError, NotFoundError
from service.api.schemas import error_responses
from service.api.views import status_of

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])

CHUNK_BYTES = 256 * 1024
FOLLOW_POLL_SECONDS = 0.05


class StreamAbortedError(Exception):
    """The job ended without a video while its MP4 was being streamed."""


@router.get(
    "/videos/{video_id}/content",
    summary="Download (or watch while it renders) a video",
    response_class=Response,
    responses={
        200: {
            "content": {"video/mp4": {}, "image/png": {}},
            "description": "The MP4 (chunked while the job runs), or the thumbnail PNG",
        },
        206: {"content": {"video/mp4": {}}, "description": "A byte range of a completed video"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **error_responses(401, 404, 409, 422),
    },
)
async def download_content(
    video_id: str,
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    variant: Annotated[
        Literal["video", "thumbnail", "spritesheet"], Query(description="video (MP4) or thumbnail (PNG)")
    ] = "video",
) -> Response:
    job = context.owned_job(video_id, caller)
    status = status_of(job)
    if variant == "spritesheet":
        raise InvalidRequestError(
            "variant 'spritesheet' is not offered here; use 'video' or 'thumbnail'", "variant"
        )
    if variant == "thumbnail":
        return _thumbnail(context, job.id, status, request)
    if status in ("failed", "cancelled"):
        raise ConflictError(f"video {job.id} is {status}: it has no content", "video_not_available")
    if status == "completed":
        path = context.storage.path(job.id)
        if not path.is_file():
            raise NotFoundError(f"video {job.id}'s file has expired or was removed", "video_expired")
        return _file_response(path, request, "video/mp4", f"{job.id}.mp4")
    return StreamingResponse(
        _follow(context, job.id),
        media_type="video/mp4",
        headers={"Cache-Control": "no-store", "X-Video-Status": status},
    )


def _thumbnail(context: AppContext, job_id: str, status: str, request: Request) -> Response:
    path = context.storage.thumbnail_path(job_id)
    if path.is_file():
        return _file_response(path, request, "image/png", f"{job_id}.png")
    if status in ("queued", "in_progress"):
        raise ConflictError(f"video {job_id} is {status}: its thumbnail is not ready yet", "video_not_ready")
    raise NotFoundError(f"video {job_id} has no thumbnail ({status})", "thumbnail_not_available")


def _file_response(path: Path, request: Request, media_type: str, filename: str) -> Response:
    stat = path.stat()
    etag = f'"{path.stem.split(".")[0]}-{stat.st_size}-{int(stat.st_mtime)}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return FileResponse(
        path, media_type=media_type, headers=headers, content_disposition_type="inline", filename=filename
    )


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def _follow(context: AppContext, job_id: str) -> AsyncIterator[bytes]:
    """Bytes of the job's MP4 from the start, as the worker writes them, until it completes.

    The reader keeps its file descriptor across the worker's rename of `.part` to `.mp4`, so it
    reads one file from its first byte to its last whatever the timing."""
    handle = await _open_when_written(context, job_id)
    sent = 0
    try:
        while True:
            data = handle.read(CHUNK_BYTES)
            if data:
                sent += len(data)
                yield data
                continue
            job = context.store.get(job_id)
            status = status_of(job) if job is not None else "deleted"
            if status == "completed":
                while data := handle.read(CHUNK_BYTES):  # written between the last read and now
                    sent += len(data)
                    yield data
                logger.info(
                    "job %s: streamed %d bytes while it rendered", job_id, sent, extra={"job_id": job_id}
                )
                return
            if status not in ("queued", "in_progress"):
                logger.info(
                    "job %s ended %s after %d streamed bytes: cutting the stream", job_id, status, sent
                )
                raise StreamAbortedError(f"video {job_id} is {status}")
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        handle.close()


async def _open_when_written(context: AppContext, job_id: str) -> IO[bytes]:
    """Open the growing .part file (or the finished file), waiting while the job is queued."""
    storage = context.storage
    while True:
        for path in (storage.partial_path(job_id), storage.path(job_id)):
            try:
                return path.open("rb")
            except FileNotFoundError:
                continue
        job = context.store.get(job_id)
        status = status_of(job) if job is not None else "deleted"
        if status not in ("queued", "in_progress"):
            if status == "completed" and storage.path(job_id).is_file():
                continue  # renamed between our two opens
            raise StreamAbortedError(f"video {job_id} is {status}: no content to stream")
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
