"""The content of a video that is still rendering: the worker's growing fragmented MP4, followed.

- `follow`: the bytes from an offset (0: the whole file) as the worker writes them, until the job
  completes; if the job fails or is cancelled meanwhile, or a rerun of the job (its first worker
  was presumed dead) replaced the file being read, the stream is cut without its closing chunk, so
  the client sees an incomplete body rather than a short file, and can resume with a Range.
- `ranged`: a `Range: bytes=N-` or `bytes=N-M` request while the job renders (a client resuming a
  stream that broke, e.g. when the API restarted). The answer waits until byte N (or M) has been
  written, then is 206: `Content-Range: bytes N-*/*` and the bytes from N followed as they are
  written until the job completes, or `bytes N-M/*` with exactly that span. If the job completes
  first the caller serves the finished file (206 with the known length, or 416 if N is past its
  end); failed or cancelled: 409.
- `live_range`: which Range requests `ranged` serves (parsed by hyv.service.byte_ranges, so several
  ranges that touch are one). `bytes=0-` is the whole stream (200, as without a Range: what a
  browser's <video> sends first, and a 200 needs no Content-Range); a suffix (`bytes=-K`: the end
  is not written yet), ranges that stay apart, another unit, a value with no range in it, and any
  request with `If-Range` are ignored: the whole stream, 200. RFC 9110 §14.2 lets a server ignore a
  Range, and §13.1.5 makes an If-Range false without a validator to match (a rendering video has
  no ETag or Last-Modified yet). `bytes=N-M` with M < N is 416 without a Content-Range (the length
  is not known, and `bytes */*` is not a valid one).

`bytes N-*/*` is this service's one departure from RFC 9110, whose Content-Range needs the last
byte's position: the span from N to an end nobody knows yet has no standard form (RFC 8673 has
the client ask for a huge last byte instead). A resuming client needs the status, the first
position and the body, which are standard; the `*` tells it the rest is still being written.

The reader keeps its file descriptor across the worker's rename of `.part` to `.mp4`, so it reads
one file from its first byte to its last whatever the timing. Where this process does not see the
worker's files (S3 storage, an API on another box) the stream starts once the job completes, from
the stored video (Storage.open_content).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from hyv.service.api.context import AppContext
from hyv.service.api.errors import APIError
from hyv.service.byte_ranges import RangeNotSatisfiableError, parse_range
from hyv.service.storage import StorageError
from hyv.service.video_object import status_of

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
FOLLOW_POLL_SECONDS = 0.05
RUNNING = ("queued", "in_progress")


class StreamAbortedError(Exception):
    """The job ended without a video (or its file was replaced) while its MP4 was being streamed."""


def live_range(request: Request) -> tuple[int, int | None] | None:
    """(first, last or None) of a Range this module serves while the job renders; None: answer the
    whole stream (no Range, or one that is ignored: see the module's docstring)."""
    header = request.headers.get("range")
    if header is None or request.headers.get("if-range") is not None:
        return None
    try:
        byte_range = parse_range(header)
    except RangeNotSatisfiableError:
        raise APIError(
            416,
            "range_not_satisfiable",
            f"Range {header[:80]!r}: the last byte comes before the first",
            "Range",
        ) from None
    if byte_range is None or byte_range.first is None:  # none, or a suffix: the whole stream
        return None
    if byte_range.first == 0 and byte_range.last is None:
        return None
    return byte_range.first, byte_range.last


async def ranged(
    context: AppContext, job_id: str, request: Request, first: int, last: int | None
) -> Response | str:
    """206 once the bytes are written (see the module's docstring); else the job's status when it
    ended first ("completed", "failed", "cancelled" or "deleted": the caller answers), or
    "disconnected" if the client left while the answer waited."""
    needed = first + 1 if last is None else last + 1
    found = await _wait_for_bytes(context, job_id, needed, request)
    if isinstance(found, str):
        return found
    handle, status = found
    headers = {"Cache-Control": "no-store", "X-Video-Status": status, "Accept-Ranges": "bytes"}
    if last is None:
        logger.info("job %s: resuming its stream at byte %d while it renders", job_id, first)
        headers["Content-Range"] = f"bytes {first}-*/*"
        return StreamingResponse(
            follow(context, job_id, handle, first), 206, headers=headers, media_type="video/mp4"
        )
    headers.update({"Content-Range": f"bytes {first}-{last}/*", "Content-Length": str(last - first + 1)})
    return StreamingResponse(_span(handle, first, last + 1), 206, headers=headers, media_type="video/mp4")


async def follow(
    context: AppContext, job_id: str, handle: IO[bytes] | None = None, start: int = 0
) -> AsyncIterator[bytes]:
    """Bytes of the job's MP4 from `start`, as the worker writes them, until it completes.
    `handle`: the file already opened (by `ranged`), else it is opened when written."""
    if handle is None:
        handle = await _open_when_written(context, job_id)
        if handle is None:  # finished before we saw a local file: the stored video
            async for data in _stored_video(context, job_id):
                yield data
            return
    sent = 0
    try:
        handle.seek(start)
        while True:
            data = handle.read(CHUNK_BYTES)
            if data:
                sent += len(data)
                yield data
                continue
            job = context.jobs.get(job_id)
            status = status_of(job) if job is not None else "deleted"
            if status == "completed":
                while data := handle.read(CHUNK_BYTES):  # written between the last read and now
                    sent += len(data)
                    yield data
                if not _is_current(context, job_id, handle):
                    raise StreamAbortedError(f"video {job_id}: completed by another run than the one read")
                logger.info(
                    "job %s: streamed %d bytes from byte %d while it rendered",
                    job_id,
                    sent,
                    start,
                    extra={"job_id": job_id},
                )
                return
            if status not in RUNNING:
                logger.info(
                    "job %s ended %s after %d streamed bytes: cutting the stream", job_id, status, sent
                )
                raise StreamAbortedError(f"video {job_id} is {status}")
            if not _is_current(context, job_id, handle):
                logger.warning(
                    "job %s restarted on another worker after %d streamed bytes: cutting the stream"
                    " (the client can resume with a Range)",
                    job_id,
                    sent,
                )
                raise StreamAbortedError(f"video {job_id}: its file was replaced by a rerun")
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        handle.close()


async def _span(handle: IO[bytes], start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes [start, end) of a file known to hold them."""
    try:
        handle.seek(start)
        left = end - start
        while left > 0:
            data = handle.read(min(CHUNK_BYTES, left))
            if not data:
                raise StreamAbortedError(f"{handle.name}: shorter than {end} bytes")
            left -= len(data)
            yield data
    finally:
        handle.close()


def _is_current(context: AppContext, job_id: str, handle: IO[bytes]) -> bool:
    """Whether `handle` is still the job's file: the `.part` being written or the published
    `.mp4`, not one a rerun of the job replaced (each run writes a new file). True when neither
    exists (the local copy of a video uploaded to S3 is deleted)."""
    inode = os.fstat(handle.fileno()).st_ino
    storage, seen = context.storage, False
    for path in (storage.partial_path(job_id), storage.path(job_id)):
        try:
            if path.stat().st_ino == inode:
                return True
            seen = True
        except FileNotFoundError:
            continue
    return not seen


async def _wait_for_bytes(
    context: AppContext, job_id: str, needed: int, request: Request
) -> tuple[IO[bytes], str] | str:
    """Wait until the job's current file holds `needed` bytes: (the file opened, the job's status),
    or the status once the job is no longer rendering."""
    storage = context.storage
    handle: IO[bytes] | None = None
    try:
        while True:
            job = context.jobs.get(job_id)
            status = status_of(job) if job is not None else "deleted"
            if status not in RUNNING:
                return status
            if handle is not None and not _is_current(context, job_id, handle):
                handle.close()  # a rerun started the file over: follow the new one
                handle = None
            if handle is None:
                handle = _open_existing(storage.partial_path(job_id), storage.path(job_id))
            if handle is not None and os.fstat(handle.fileno()).st_size >= needed:
                found, handle = handle, None  # the caller's now
                return found, status
            if await request.is_disconnected():
                logger.info("job %s: the client left while waiting for byte %d", job_id, needed - 1)
                return "disconnected"
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        if handle is not None:
            handle.close()


def _open_existing(*paths: Path) -> IO[bytes] | None:
    """The first of `paths` that exists, opened (the caller closes it)."""
    for path in paths:
        try:
            return path.open("rb")
        except FileNotFoundError:
            continue
    return None


async def _stored_video(context: AppContext, job_id: str) -> AsyncIterator[bytes]:
    try:
        content = await run_in_threadpool(context.storage.open_content, job_id, "video")
    except StorageError as exc:
        raise StreamAbortedError(f"video {job_id}: {exc}") from exc
    if content is None:
        raise StreamAbortedError(f"video {job_id} is completed: no content to stream")
    async for data in iterate_in_threadpool(content.chunks(CHUNK_BYTES)):
        yield data


async def _open_when_written(context: AppContext, job_id: str) -> IO[bytes] | None:
    """Open the growing .part file (or the finished file), waiting while the job is queued; None
    when the job completed without a file this process sees (then the stored video is read)."""
    storage = context.storage
    while True:
        handle = _open_existing(storage.partial_path(job_id), storage.path(job_id))
        if handle is not None:
            return handle
        job = context.jobs.get(job_id)
        status = status_of(job) if job is not None else "deleted"
        if status not in RUNNING:
            if status == "completed" and storage.path(job_id).is_file():
                continue  # renamed between our two opens
            if status == "completed":
                return None
            raise StreamAbortedError(f"video {job_id} is {status}: no content to stream")
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
