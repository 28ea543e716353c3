"""GET /v1/videos/{id}/content: the MP4 (or its first-frame thumbnail, or its spritesheet); HEAD:
its headers only.

- Completed: the stored file, whatever the storage (Storage.open_content), with Range / 206 / 416 /
  If-Range as RFC 9110 has them (hyv.service.byte_ranges: which ranges are served, coalesced or
  ignored), a strong ETag (`If-None-Match` -> 304), Last-Modified and Content-Length. HEAD answers
  the same headers (Storage.content_info) without reading the content, and ignores a Range.
- Queued or in progress: a chunked stream of the fragmented MP4 from its first byte, following
  the worker's growing `.part` file until the job completes, so a client that starts early still
  receives the whole playable file. If the job fails or is cancelled meanwhile the connection is
  cut without the closing chunk, so the client sees an incomplete body rather than a short file.
  A client whose stream broke resumes with `Range: bytes=N-`: 206 from byte N, followed the same
  way (hyv.service.api.content_live, which also says which ranges are served while rendering).

With S3 storage (hyv.service.storage_s3) the range becomes a ranged GET and the ETag is S3's; the
growing `.part` spool is followed as above where this process sees the worker's data_dir,
otherwise the stream starts once the video is in S3. Every storage call runs in the thread pool
(boto3 blocks), and a storage failure answers 503 `storage_error`.

The thumbnail is made by the worker when the job completes. The spritesheet (a JPEG grid of evenly
spaced frames: hyv.service.spritesheet) is made here, from the stored MP4, on its first request
(GET or HEAD) and stored beside the thumbnail, then served like it: a variant few clients ask for
costs the workers nothing, and videos finished before it existed have one too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from hyv.service.api.auth import CallerDep
from hyv.service.api.content_live import CHUNK_BYTES, follow, live_range, ranged
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.errors import APIError, ConflictError, NotFoundError, ServiceUnavailableError
from hyv.service.api.schemas import ErrorResponse, error_responses
from hyv.service.byte_ranges import RangeNotSatisfiableError, if_range_holds, parse_range
from hyv.service.spritesheet import MEDIA_TYPE as SPRITESHEET_MEDIA_TYPE
from hyv.service.spritesheet import make_spritesheet
from hyv.service.storage import ContentInfo, Storage, StorageError, Variant
from hyv.service.video_object import status_of

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])
CACHE_CONTROL = "private, max-age=3600"
MEDIA_TYPES: dict[Variant, str] = {
    "video": "video/mp4",
    "thumbnail": "image/png",
    "spritesheet": SPRITESHEET_MEDIA_TYPE,
}
EXTENSIONS: dict[Variant, str] = {"video": "mp4", "thumbnail": "png", "spritesheet": "jpg"}
VariantQuery = Annotated[
    Literal["video", "thumbnail", "spritesheet"],
    Query(
        description="video (MP4), thumbnail (the first frame, PNG) or spritesheet (a JPEG grid of up "
        "to 4x4 evenly spaced frames, the first and the last included, each at the video's size)"
    ),
]
# Spritesheets being made, by (app, job): concurrent first requests wait for the same one.
_SPRITESHEET_BUILDS: dict[tuple[int, str], asyncio.Future[bool]] = {}


@router.get(
    "/videos/{video_id}/content",
    summary="Download (or watch while it renders) a video",
    response_class=Response,
    responses={
        200: {
            "content": {"video/mp4": {}, "image/png": {}, "image/jpeg": {}},
            "description": "The MP4 (chunked while the job runs), the thumbnail PNG or the spritesheet JPEG",
        },
        206: {
            "content": {"video/mp4": {}},
            "description": "A byte range: of a completed video, or from `bytes=N-` of one still rendering"
            " (`Content-Range: bytes N-*/*`, followed until it completes)",
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        416: {
            "model": ErrorResponse,
            "description": "Range not satisfiable (`Content-Range: bytes */<size>` where the size is known)",
        },
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
    if variant == "thumbnail":
        return await _thumbnail(context, job.id, status, request)
    if variant == "spritesheet":
        return await _spritesheet(context, job.id, status, request)
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
    """The finished MP4 (Range/206/416, If-Range, ETag/304)."""
    response = await _stored_response(context, job_id, "video", request)
    if response is None:
        raise NotFoundError(f"video {job_id}'s file has expired or was removed", "video_expired")
    return response


@router.head(
    "/videos/{video_id}/content",
    summary="A video's (or thumbnail's, or spritesheet's) headers: size, ETag, type",
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
    if variant == "spritesheet":
        _check_spritesheet_status(job.id, status)
        info = await _content_info(context, job.id, "spritesheet")
        if info is None and await _build_spritesheet(context, job.id):
            info = await _content_info(context, job.id, "spritesheet")
        if info is None:
            raise NotFoundError(f"video {job.id}'s file has expired or was removed", "video_expired")
        return _head_response(info, request, job.id, "spritesheet")
    if variant == "video" and status in ("failed", "cancelled"):
        raise ConflictError(f"video {job.id} is {status}: it has no content", "video_not_available")
    if variant == "video" and status != "completed":
        response = Response(
            media_type="video/mp4", headers={"Cache-Control": "no-store", "X-Video-Status": status}
        )
        del response.headers["content-length"]  # unknown until it completes
        return response
    info = await _content_info(context, job.id, variant)
    if info is not None:
        return _head_response(info, request, job.id, variant)
    if variant == "video":
        raise NotFoundError(f"video {job.id}'s file has expired or was removed", "video_expired")
    if status in ("queued", "in_progress"):
        raise ConflictError(f"video {job.id} is {status}: its thumbnail is not ready yet", "video_not_ready")
    raise NotFoundError(f"video {job.id} has no thumbnail ({status})", "thumbnail_not_available")


async def _content_info(context: AppContext, job_id: str, variant: Variant) -> ContentInfo | None:
    try:
        return await run_in_threadpool(context.storage.content_info, job_id, variant)
    except StorageError as exc:
        raise _storage_unavailable(job_id, variant, exc) from exc


def _head_response(info: ContentInfo, request: Request, job_id: str, variant: Variant) -> Response:
    headers = {"ETag": info.etag, "Cache-Control": CACHE_CONTROL}
    if info.etag in _etags(request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    headers.update(
        {
            "Accept-Ranges": "bytes",
            "Last-Modified": info.last_modified_http,
            "Content-Length": str(info.size),
            "Content-Disposition": _disposition(job_id, variant),
        }
    )
    return Response(status_code=200, headers=headers, media_type=MEDIA_TYPES[variant])


def _storage_unavailable(job_id: str, what: str, exc: StorageError) -> ServiceUnavailableError:
    logger.error("job %s: %s", job_id, exc, extra={"job_id": job_id})
    return ServiceUnavailableError(f"the {what} cannot be read from storage now", "storage_error")


async def _thumbnail(context: AppContext, job_id: str, status: str, request: Request) -> Response:
    response = await _stored_response(context, job_id, "thumbnail", request)
    if response is not None:
        return response
    if status in ("queued", "in_progress"):
        raise ConflictError(f"video {job_id} is {status}: its thumbnail is not ready yet", "video_not_ready")
    raise NotFoundError(f"video {job_id} has no thumbnail ({status})", "thumbnail_not_available")


async def _spritesheet(context: AppContext, job_id: str, status: str, request: Request) -> Response:
    """The stored spritesheet, made from the stored MP4 first if this is its first request."""
    _check_spritesheet_status(job_id, status)
    response = await _stored_response(context, job_id, "spritesheet", request)
    if response is None and await _build_spritesheet(context, job_id):
        response = await _stored_response(context, job_id, "spritesheet", request)
    if response is None:
        raise NotFoundError(f"video {job_id}'s file has expired or was removed", "video_expired")
    return response


def _check_spritesheet_status(job_id: str, status: str) -> None:
    if status in ("queued", "in_progress"):
        raise ConflictError(
            f"video {job_id} is {status}: its spritesheet is not ready yet", "video_not_ready"
        )
    if status in ("failed", "cancelled"):
        raise ConflictError(f"video {job_id} is {status}: it has no content", "video_not_available")


async def _build_spritesheet(context: AppContext, job_id: str) -> bool:
    """Make and store the spritesheet of a completed job's MP4 (once, however many requests ask at
    the same time); False if the MP4 is gone."""
    key = (id(context), job_id)
    build = _SPRITESHEET_BUILDS.get(key)
    if build is None:
        build = asyncio.ensure_future(run_in_threadpool(_make_and_store_spritesheet, context.storage, job_id))
        _SPRITESHEET_BUILDS[key] = build
        build.add_done_callback(lambda _: _SPRITESHEET_BUILDS.pop(key, None))
    try:
        return await asyncio.shield(build)  # a client that leaves does not cancel the others' build
    except StorageError as exc:
        raise _storage_unavailable(job_id, "spritesheet", exc) from exc
    except ValueError as exc:
        logger.error("job %s: cannot make its spritesheet: %s", job_id, exc, extra={"job_id": job_id})
        raise APIError(
            500, "spritesheet_failed", f"the spritesheet of video {job_id} could not be made: {exc}"
        ) from exc


def _make_and_store_spritesheet(storage: Storage, job_id: str) -> bool:
    if storage.content_info(job_id, "video") is None:
        return False
    try:
        with storage.video_file(job_id) as path:
            jpeg, layout = make_spritesheet(path)
    except FileNotFoundError:  # deleted or expired since the check above
        return False
    storage.save_spritesheet(job_id, jpeg)
    logger.info(
        "spritesheet made: %dx%d tiles of %d frames",
        layout.columns,
        layout.rows,
        layout.frame_count,
        extra={"job_id": job_id},
    )
    return True


async def _stored_response(
    context: AppContext, job_id: str, variant: Variant, request: Request
) -> Response | None:
    """The stored content as a file download (Range/206/416, If-Range, ETag/304, Content-Length),
    whatever the storage; None if there is no such content. The order is RFC 9110's: If-None-Match
    (304), then If-Range, then the Range (hyv.service.byte_ranges)."""
    headers = request.headers
    if_none_match = _etags(headers.get("if-none-match"))
    if_range, range_header = headers.get("if-range"), headers.get("range", "")
    try:
        byte_range, invalid = parse_range(range_header), False
    except RangeNotSatisfiableError:
        byte_range, invalid = None, True  # 416, unless a 304 or a stale If-Range comes first
    ranged = byte_range is not None or invalid
    try:
        if if_none_match or invalid or (ranged and if_range):
            info = await run_in_threadpool(context.storage.content_info, job_id, variant)
            if info is None:
                return None
            if info.etag in if_none_match or "*" in if_none_match:
                return Response(status_code=304, headers={"ETag": info.etag, "Cache-Control": CACHE_CONTROL})
            if ranged and if_range and not if_range_holds(if_range, info.etag, info.last_modified_http):
                byte_range, invalid = None, False  # the client's copy is stale: the whole new one
            if invalid:
                raise _not_satisfiable(range_header, info.size, "its last byte comes before its first")
        content = await run_in_threadpool(context.storage.open_content, job_id, variant, byte_range)
    except RangeNotSatisfiableError as exc:
        size = exc.size
        if size is None:
            info = await _content_info(context, job_id, variant)
            if info is None:
                return None
            size = info.size
        raise _not_satisfiable(range_header, size, "no byte of it is in the content") from None
    except StorageError as exc:
        raise _storage_unavailable(job_id, variant, exc) from exc
    if content is None:
        return None
    response_headers = {
        "ETag": content.etag,
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
        "Last-Modified": content.last_modified_http,
        "Content-Length": str(content.length),
        "Content-Disposition": _disposition(job_id, variant),
    }
    if content.content_range:
        response_headers["Content-Range"] = content.content_range
    return StreamingResponse(
        content.chunks(CHUNK_BYTES),  # a sync iterator: Starlette reads it in its thread pool
        status_code=206 if content.content_range else 200,
        media_type=MEDIA_TYPES[variant],
        headers=response_headers,
    )


def _not_satisfiable(header: str, size: int, why: str) -> APIError:
    """416 naming the content's length (RFC 9110 §15.5.17)."""
    return APIError(
        416,
        "range_not_satisfiable",
        f"Range {header[:80]!r} cannot be served from this content of {size} bytes: {why}",
        "Range",
        {"Content-Range": f"bytes */{size}"},
    )


def _disposition(job_id: str, variant: Variant) -> str:
    return f'inline; filename="{job_id}.{EXTENSIONS[variant]}"'


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
