"""GET /v1/videos/{id}/content: the MP4 (or its first-frame thumbnail); HEAD: its headers only.

- Completed: the file, with Range / 206 / 416 / If-Range (Starlette's FileResponse, with the live
  stream's answers to reversed and unreadable ranges: `_FinishedFileResponse`), a strong ETag
  (`If-None-Match` -> 304) and Content-Length. HEAD answers the same headers (Content-Length, ETag,
  Accept-Ranges, Content-Type) without reading the file or the object.
- Queued or in progress: a chunked stream of the fragmented MP4 from its first byte, following
  the worker's growing `.part` file until the job completes, so a client that starts early still
  receives the whole playable file. If the job fails or is cancelled meanwhile the connection is
  cut without the closing chunk, so the client sees an incomplete body rather than a short file.
  A client whose stream broke resumes with `Range: bytes=N-`: 206 from byte N, followed the same
  way (hyv.service.api.content_live, which also says which ranges are served while rendering).

With S3 storage (hyv.service.storage_s3) finished videos and thumbnails are read from S3: the Range
header is passed through as a ranged GET, the ETag is S3's; the growing `.part` spool is followed
as above where this process sees the worker's data_dir, otherwise the stream starts once the
video is in S3. Every S3 call runs in the thread pool (boto3 blocks), and an S3 failure answers
503 `storage_error`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from hyv.service.api.auth import CallerDep
from hyv.service.api.content_live import CHUNK_BYTES, follow, live_range, ranged
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from hyv.service.api.schemas import error_responses
from hyv.service.api.views import status_of
from hyv.service.storage import StorageError
from hyv.service.storage_s3 import RangeNotSatisfiableError, S3ObjectInfo, S3Storage

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])
VariantQuery = Annotated[
    Literal["video", "thumbnail", "spritesheet"], Query(description="video (MP4) or thumbnail (PNG)")
]

_SINGLE_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")  # what S3 takes (one range, no lists)


@router.get(
    "/videos/{video_id}/content",
    summary="Download (or watch while it renders) a video",
    response_class=Response,
    responses={
        200: {
            "content": {"video/mp4": {}, "image/png": {}},
            "description": "The MP4 (chunked while the job runs), or the thumbnail PNG",
        },
        206: {
            "content": {"video/mp4": {}},
            "description": "A byte range: of a completed video, or from `bytes=N-` of one still rendering"
            " (`Content-Range: bytes N-*/*`, followed until it completes)",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        416: {"description": "Range not satisfiable (`Content-Range: bytes */<size or *>`)"},
        **error_responses(401, 404, 409, 422, 503),
    },
)
async def download_content(
    video_id: str,
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    variant: VariantQuery = "video",
) -> Response:
    job = context.owned_job(video_id, caller)
    status = status_of(job)
    _check_variant(variant)
    if variant == "thumbnail":
        return await _thumbnail(context, job.id, status, request)
    if status in ("queued", "in_progress") and (byte_range := live_range(request)) is not None:
        answer = await ranged(context, job.id, request, *byte_range)
        if isinstance(answer, Response):
            return answer
        status = answer  # the job ended before those bytes were written
        if status == "disconnected":
            return Response(status_code=499)  # nobody to answer (nginx's "client closed request")
        if status == "deleted":
            raise NotFoundError(f"no video {job.id!r} for this API key")
    if status in ("failed", "cancelled"):
        raise ConflictError(f"video {job.id} is {status}: it has no content", "video_not_available")
    if status == "completed":
        return await _completed_video(context, job.id, request)
    return StreamingResponse(
        follow(context, job.id),
        media_type="video/mp4",
        headers={"Cache-Control": "no-store", "X-Video-Status": status},
    )


async def _completed_video(context: AppContext, job_id: str, request: Request) -> Response:
    """The finished MP4 (Range/206/416, If-Range, ETag/304): the file, or the object in S3."""
    if isinstance(context.storage, S3Storage):
        response = await _s3_response(context.storage, job_id, "video", request)
        if response is None:
            raise NotFoundError(f"video {job_id}'s file has expired or was removed", "video_expired")
        return response
    path = context.storage.path(job_id)
    if not path.is_file():
        raise NotFoundError(f"video {job_id}'s file has expired or was removed", "video_expired")
    return _file_response(path, request, "video/mp4", f"{job_id}.mp4")


@router.head(
    "/videos/{video_id}/content",
    summary="A video's (or thumbnail's) headers: size, ETag, type",
    response_class=Response,
    responses={
        200: {"description": "Headers only: Content-Length, ETag, Accept-Ranges, Content-Type"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **error_responses(401, 404, 409, 422, 503),
    },
)
async def content_headers(
    video_id: str,
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    variant: VariantQuery = "video",
) -> Response:
    """HEAD: what GET would answer, without the body (and without reading the content). While the
    job renders: 200 with `X-Video-Status` and no length (the GET would be a chunked stream)."""
    job = context.owned_job(video_id, caller)
    status = status_of(job)
    _check_variant(variant)
    if variant == "video" and status in ("failed", "cancelled"):
        raise ConflictError(f"video {job.id} is {status}: it has no content", "video_not_available")
    if variant == "video" and status != "completed":
        response = Response(
            media_type="video/mp4", headers={"Cache-Control": "no-store", "X-Video-Status": status}
        )
        del response.headers["content-length"]  # unknown until it completes
        return response
    storage = context.storage
    if isinstance(storage, S3Storage):
        info = await _s3_head(storage, job.id, variant)  # type: ignore[arg-type]
        if info is not None:
            return _s3_head_response(info, request, f"{job.id}.{'mp4' if variant == 'video' else 'png'}")
    else:
        path = storage.path(job.id) if variant == "video" else storage.thumbnail_path(job.id)
        if path.is_file():
            if variant == "video":
                return _file_response(path, request, "video/mp4", f"{job.id}.mp4")
            return _file_response(path, request, "image/png", f"{job.id}.png")
    if variant == "video":
        raise NotFoundError(f"video {job.id}'s file has expired or was removed", "video_expired")
    if status in ("queued", "in_progress"):
        raise ConflictError(f"video {job.id} is {status}: its thumbnail is not ready yet", "video_not_ready")
    raise NotFoundError(f"video {job.id} has no thumbnail ({status})", "thumbnail_not_available")


def _check_variant(variant: str) -> None:
    if variant == "spritesheet":
        raise InvalidRequestError(
            "variant 'spritesheet' is not offered here; use 'video' or 'thumbnail'", "variant"
        )


async def _s3_head(
    storage: S3Storage, job_id: str, variant: Literal["video", "thumbnail"]
) -> S3ObjectInfo | None:
    try:
        return await run_in_threadpool(storage.head, job_id, variant)
    except StorageError as exc:
        raise _storage_unavailable(job_id, variant, exc) from exc


def _s3_head_response(info: S3ObjectInfo, request: Request, filename: str) -> Response:
    headers = {"ETag": info.etag, "Cache-Control": "private, max-age=3600"}
    if info.etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    headers.update(
        {
            "Accept-Ranges": "bytes",
            "Last-Modified": info.last_modified_http,
            "Content-Length": str(info.size),
            "Content-Disposition": f'inline; filename="{filename}"',
        }
    )
    media_type = "video/mp4" if filename.endswith(".mp4") else "image/png"
    return Response(status_code=200, headers=headers, media_type=media_type)


def _storage_unavailable(job_id: str, what: str, exc: StorageError) -> ServiceUnavailableError:
    logger.error("job %s: %s", job_id, exc, extra={"job_id": job_id})
    return ServiceUnavailableError(f"the {what} cannot be read from storage now", "storage_error")


async def _thumbnail(context: AppContext, job_id: str, status: str, request: Request) -> Response:
    if isinstance(context.storage, S3Storage):
        response = await _s3_response(context.storage, job_id, "thumbnail", request)
        if response is not None:
            return response
    else:
        path = context.storage.thumbnail_path(job_id)
        if path.is_file():
            return _file_response(path, request, "image/png", f"{job_id}.png")
    if status in ("queued", "in_progress"):
        raise ConflictError(f"video {job_id} is {status}: its thumbnail is not ready yet", "video_not_ready")
    raise NotFoundError(f"video {job_id} has no thumbnail ({status})", "thumbnail_not_available")


_REVERSED_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


class _FinishedFileResponse(FileResponse):
    """Starlette's FileResponse, with the Range answers of the live stream and of S3: a Range it
    cannot read (another unit, no range in it) is ignored, as RFC 9110 allows (200, the whole
    file), and a reversed one (`bytes=30-10`) is 416 with `Content-Range: bytes */<size>`;
    Starlette answers 400 to both."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        unit, _, spec = http_range.partition("=")
        if unit.strip().lower() == "bytes":
            for part in spec.split(","):
                bounds = _REVERSED_RANGE.fullmatch(part)
                if bounds is not None and int(bounds[2]) < int(bounds[1]):
                    raise RangeNotSatisfiable(file_size)
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # no range: the whole file


def _file_response(path: Path, request: Request, media_type: str, filename: str) -> Response:
    stat = path.stat()
    etag = f'"{path.stem.split(".")[0]}-{stat.st_size}-{int(stat.st_mtime)}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    return _FinishedFileResponse(
        path, media_type=media_type, headers=headers, content_disposition_type="inline", filename=filename
    )


async def _s3_response(
    storage: S3Storage, job_id: str, variant: Literal["video", "thumbnail"], request: Request
) -> Response | None:
    """The object from S3 as FileResponse would send a file (Range/206/416, If-Range, ETag/304,
    Content-Length); None if there is no such object."""
    headers = request.headers
    byte_range = (headers.get("range") or "").replace(" ", "")
    if not _SINGLE_RANGE.fullmatch(byte_range):
        byte_range = ""  # no range, or one S3 cannot serve (several ranges): the whole object
    if_none_match = _etags(headers.get("if-none-match"))
    if_range = headers.get("if-range")
    try:
        if if_none_match or (byte_range and if_range):
            info = await run_in_threadpool(storage.head, job_id, variant)
            if info is None:
                return None
            if info.etag in if_none_match:
                return Response(
                    status_code=304, headers={"ETag": info.etag, "Cache-Control": "private, max-age=3600"}
                )
            if if_range and if_range not in (info.etag, info.last_modified_http):
                byte_range = ""  # the client's copy is stale: send the whole new one
        obj = await run_in_threadpool(storage.open_object, job_id, variant, byte_range or None)
    except RangeNotSatisfiableError as exc:
        return PlainTextResponse(status_code=416, headers={"Content-Range": f"bytes */{exc.size or '*'}"})
    except StorageError as exc:
        raise _storage_unavailable(job_id, variant, exc) from exc
    if obj is None:
        return None
    filename = f"{job_id}.mp4" if variant == "video" else f"{job_id}.png"
    response_headers = {
        "ETag": obj.etag,
        "Cache-Control": "private, max-age=3600",
        "Accept-Ranges": "bytes",
        "Last-Modified": obj.last_modified_http,
        "Content-Length": str(obj.length),
        "Content-Disposition": f'inline; filename="{filename}"',
    }
    if obj.content_range:
        response_headers["Content-Range"] = obj.content_range
    return StreamingResponse(
        obj.chunks(CHUNK_BYTES),  # a sync iterator: Starlette reads it in its thread pool
        status_code=206 if obj.content_range else 200,
        media_type="video/mp4" if variant == "video" else "image/png",
        headers=response_headers,
    )


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
