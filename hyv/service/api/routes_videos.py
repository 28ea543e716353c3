"""POST/GET/DELETE /v1/videos: submit, look up, list and cancel or delete video jobs."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from hyv.service import metrics
from hyv.service.api.auth import CallerDep, authenticate_request
from hyv.service.api.body import parse_create_body
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.errors import ConflictError, InvalidRequestError, ServiceUnavailableError
from hyv.service.api.openapi_docs import CREATE_REQUEST_BODY
from hyv.service.api.schemas import VideoDeleted, VideoList, error_responses
from hyv.service.api.validation import (
    build_plan,
    duration_text,
    now,
    plan_to_request_dict,
    requested_fields,
)
from hyv.service.celery_app import enqueue
from hyv.service.job_model import Job, JobStatus, new_job_id
from hyv.service.job_records import ActiveJobLimitError
from hyv.service.settings import Settings
from hyv.service.storage import StorageError
from hyv.service.video_object import VideoPublic, status_of, to_public
from hyv.service.webhooks import check_webhook_url

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])

ACTIVE = ("queued", "in_progress")
POLL_AFTER_MS = "250"  # read by the OpenAI SDK's create_and_poll/poll
IDEMPOTENCY_KEY_MAX = 255


def video_response(job: Job, context: AppContext, status_code: int = 200, **headers: str) -> Response:
    position = context.jobs.queue_position(job.id, job.model) if status_of(job) == "queued" else None
    return _video_json(job, position, status_code, headers)


def _video_json(job: Job, position: int | None, status_code: int, headers: dict[str, str]) -> Response:
    body = to_public(job, position).model_dump_json()
    extra = {"openai-poll-after-ms": POLL_AFTER_MS} if status_of(job) in ACTIVE else {}
    return Response(body, status_code, headers={**extra, **headers}, media_type="application/json")


@router.post(
    "/videos",
    status_code=201,
    response_model=VideoPublic,
    summary="Create a video",
    description="Queue a generation job and return at once. Send multipart/form-data (what the OpenAI "
    "SDK sends; the image as the `input_reference` file) or JSON (the image as a base64 data URL). "
    "An `Idempotency-Key` makes retries safe: the same key and body return the same job.",
    responses={
        200: {"model": VideoPublic, "description": "Idempotent replay of an earlier submission"},
        **error_responses(401, 409, 413, 422, 429, 503),
    },
    openapi_extra={"requestBody": CREATE_REQUEST_BODY},
)
async def create_video(
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", description="Any unique string, e.g. a UUID.")
    ] = None,
) -> Response:
    settings = context.settings
    if idempotency_key is not None and not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters, got {len(idempotency_key)}",
            "Idempotency-Key",
        )
    context.limiter.check_rate(caller.owner)
    body = await parse_create_body(request, settings.max_upload_bytes)
    fingerprint = body.fingerprint()
    if idempotency_key is not None:
        replay = await _replay(context, caller.owner, idempotency_key, fingerprint)
        if replay is not None:
            return video_response(replay, context, 200, **{"Idempotent-Replayed": "true"})

    model = context.models.choose(body.video.model)
    plan = build_plan(body.video, body.image, model)
    if body.video.webhook_url is not None:
        await _check_webhook(body.video.webhook_url, settings)
    # A cheap early answer; the cap itself is enforced where the job is created (one script).
    context.limiter.check_queue(caller.owner, context.jobs.queued_count(caller.owner))

    job_id = new_job_id()
    asked = requested_fields(body.video)
    if idempotency_key is not None:
        claimed = context.idempotency.set(caller.owner, idempotency_key, job_id, fingerprint)
        if claimed is False:  # a concurrent request with the same key won the race
            replay = await _replay(context, caller.owner, idempotency_key, fingerprint)
            if replay is not None:
                return video_response(replay, context, 200, **{"Idempotent-Replayed": "true"})

    job = Job(
        id=job_id,
        owner=caller.owner,
        model=model.name,
        status=JobStatus.QUEUED,
        progress=0,
        created_at=now(),
        request=plan_to_request_dict(plan),
        prompt=plan.prompt,
        size=f"{plan.width}x{plan.height}",
        seconds=duration_text(plan.num_frames, plan.fps),
        num_frames=plan.num_frames,
        fps=plan.fps,
        webhook_url=body.video.webhook_url,
        requested_size=asked["requested_size"],
        requested_seconds=asked["requested_seconds"],
    )
    try:
        await store_and_enqueue(context, job, body.image)
    except BaseException:
        # Nothing was queued: the key must not keep pointing at a job that will never run, or a
        # retry with the same key would replay it instead of submitting again.
        if idempotency_key is not None:
            _release_key(context, caller.owner, idempotency_key, job_id, fingerprint)
        raise
    metrics.job_submitted(job.model, "i2v" if body.image is not None else "t2v")
    logger.info(
        "job %s queued for %s: %s %d frames %d steps",
        job_id,
        caller.label,
        job.size,
        plan.num_frames,
        plan.steps,
        extra={"job_id": job_id},
    )
    return video_response(job, context, 201, Location=f"/v1/videos/{job_id}")


async def store_and_enqueue(
    context: AppContext, job: Job, image: bytes | None, source_video: bytes | None = None
) -> None:
    """Save the input image and source video (object storage: in the thread pool), store the job,
    send the task. A failure leaves no job behind and answers 503 (`storage_error` or
    `queue_unavailable`)."""
    for what, data, save in (
        ("input image", image, context.storage.save_input_image),
        ("source video", source_video, context.storage.save_input_video),
    ):
        if data is None:
            continue
        try:
            await run_in_threadpool(save, job.id, data)
        except StorageError as exc:
            logger.error("job %s: %s", job.id, exc, extra={"job_id": job.id})
            await _delete_quietly(context, job.id)  # what was saved before this one
            raise ServiceUnavailableError(f"the {what} cannot be stored now", "storage_error") from exc
    has_files = image is not None or source_video is not None
    try:
        context.jobs.create(job, max_active=context.settings.max_queued_jobs_per_key)
    except ActiveJobLimitError as exc:  # another API process took the last slot meanwhile
        if has_files:
            await _delete_quietly(context, job.id)
        context.limiter.check_queue(job.owner, exc.limit)  # raises the usual 429
        raise
    try:
        enqueue(job, context.settings)
    except Exception as exc:
        logger.error(
            "job %s could not be queued: %s: %s", job.id, type(exc).__name__, exc, extra={"job_id": job.id}
        )
        context.jobs.delete(job.id)
        if has_files:
            await _delete_quietly(context, job.id)
        raise ServiceUnavailableError(
            "the job could not be queued (the broker did not take it); retry, with the same "
            "Idempotency-Key if you sent one",
            "queue_unavailable",
        ) from exc


async def _delete_quietly(context: AppContext, job_id: str) -> None:
    try:
        await run_in_threadpool(context.storage.delete, job_id)
    except (StorageError, OSError):
        logger.exception("job %s: could not delete the files of a job that was not queued", job_id)


def _release_key(context: AppContext, owner: str, key: str, job_id: str, fingerprint: str) -> None:
    try:
        context.idempotency.release(owner, key, job_id, fingerprint)
    except Exception:
        logger.exception("job %s: could not release its Idempotency-Key", job_id)


async def _check_webhook(url: str, settings: Settings) -> None:
    """422 unless the server can sign webhooks and the URL's host resolves, now, to addresses the
    webhook policy allows (hyv.service.webhook_targets; delivery checks again)."""
    if not settings.webhook_secret:
        raise InvalidRequestError(
            "webhook_url needs the server's webhook signing secret (HYV_WEBHOOK_SECRET), which is not set",
            "webhook_url",
        )
    try:  # resolving a name blocks: not on the event loop
        await run_in_threadpool(check_webhook_url, url, settings.webhook_allowed_hosts)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), "webhook_url") from None


async def _replay(context: AppContext, owner: str, key: str, fingerprint: str) -> Job | None:
    """The job an earlier request with this key made, None if the key is new; 409 if it was used
    with another body."""
    found = context.idempotency.get(owner, key)
    if found is None:
        return None
    job_id, previous = found
    if previous != fingerprint:
        raise ConflictError(
            f"Idempotency-Key {key!r} was already used with a different request body (job {job_id})",
            "idempotency_key_reused",
            "Idempotency-Key",
        )
    for _ in range(50):  # the winning request may still be writing its job
        job = context.jobs.get(job_id)
        if job is not None:
            return job
        await asyncio.sleep(0.02)
    raise ConflictError(
        f"Idempotency-Key {key!r} belongs to job {job_id}, which no longer exists", "idempotency_key_expired"
    )


@router.get(
    "/videos",
    response_model=VideoList,
    summary="List your videos",
    responses=error_responses(401, 422),
)
async def list_videos(
    caller: CallerDep,
    context: ContextDep,
    after: Annotated[str | None, Query(description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time.")] = "desc",
) -> VideoList:
    try:
        jobs = context.jobs.list_for_owner(caller.owner, after=after, limit=limit + 1, order=order)
    except ValueError as exc:
        raise InvalidRequestError(str(exc).removeprefix("after: "), "after") from None
    page = jobs[:limit]
    records = context.jobs
    data = [
        to_public(job, records.queue_position(job.id, job.model) if status_of(job) == "queued" else None)
        for job in page
    ]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(jobs) > limit,
    )


@router.get(
    "/videos/{video_id}",
    response_model=VideoPublic,
    summary="Get a video's status",
    description="Status, progress 0-100, stage and step, queue position, per-stage timings, error.",
    responses=error_responses(401, 404),
)
async def retrieve_video(video_id: str, request: Request) -> Response:
    # The hot path (clients poll it): what CallerDep and ContextDep do, without FastAPI's
    # dependency solving, and one Redis round trip for the job and its queue position.
    caller = authenticate_request(request)
    context: AppContext = request.app.state.context
    job, position = await context.owned_job_with_position(video_id, caller)
    return _video_json(job, position, 200, {})


@router.delete(
    "/videos/{video_id}",
    response_model=VideoDeleted,
    summary="Cancel or delete a video",
    description="A queued job is cancelled and never runs; a running one stops within one denoising "
    "step (status `cancelled` once its worker has stopped). A finished job (completed, failed or "
    "cancelled) is deleted with its files: `deleted` is true and the id is gone.",
    responses=error_responses(401, 404, 503),
)
async def delete_video(video_id: str, caller: CallerDep, context: ContextDep) -> VideoDeleted:
    job = context.owned_job(video_id, caller)
    if status_of(job) in ACTIVE:
        now_job = context.cancels.request(job.id) or job  # a queued job is cancelled at once
        logger.info(
            "job %s: cancel requested by %s (was %s)",
            job.id,
            caller.label,
            status_of(job),
            extra={"job_id": job.id},
        )
        return VideoDeleted(id=job.id, deleted=False, status=status_of(now_job))  # type: ignore[arg-type]
    try:  # object storage blocks: in the thread pool; on failure the record stays, so a retry works
        await run_in_threadpool(context.storage.delete, job.id)
    except StorageError as exc:
        logger.error("job %s: %s", job.id, exc, extra={"job_id": job.id})
        raise ServiceUnavailableError(
            f"video {job.id}'s files cannot be deleted from storage now; retry", "storage_error"
        ) from exc
    context.jobs.delete(job.id)
    logger.info("job %s deleted by %s", job.id, caller.label, extra={"job_id": job.id})
    return VideoDeleted(id=job.id, deleted=True, status=status_of(job))  # type: ignore[arg-type]
