"""Videos made from an earlier video: remix, edits and extensions (OpenAI's Videos API routes).

    POST /v1/videos/{id}/remix     a completed video with a new prompt: the same size, length, seed
                                   (and input image), its frames re-noised and denoised (SDEdit)
    POST /v1/videos/edits          video-to-video with a new prompt, on a completed video
                                   ({"id": ...}) or an uploaded file, by the same SDEdit path
    POST /v1/videos/extensions     a completed video (or an upload) continued by `seconds` more:
                                   image-to-video from its last frame, stitched behind it in one MP4

The source is copied into the new job's storage (`sources/{id}`) when the job is created, so the
job runs the same whether or not its source is deleted meanwhile. The worker runs it as an engine
request with `video_mode` "edit" or "extend" (hyv.engine.pipeline).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from hyv.engine.limits import DEFAULT_EDIT_STRENGTH, TIME_STRIDE, GenerationPlan, ModelLimits
from hyv.engine.source_video import MAX_SOURCE_FRAMES, VideoInfo, probe_video
from hyv.service import metrics
from hyv.service.api.auth import Caller, CallerDep
from hyv.service.api.body import parse_source_body
from hyv.service.api.context import AppContext, ContextDep
from hyv.service.api.errors import (
    ConflictError,
    InvalidRequestError,
    ServiceUnavailableError,
    validation_message,
)
from hyv.service.api.routes_videos import store_and_enqueue, video_response
from hyv.service.api.schemas import VideoCreate, error_responses
from hyv.service.api.validation import ServedModel, build_plan, duration_text, now, plan_to_request_dict
from hyv.service.job_model import Job, JobStatus, Operation, new_job_id
from hyv.service.storage import StorageError
from hyv.service.video_object import VideoPublic, status_of

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"])


BodyT = TypeVar("BodyT", bound=BaseModel)


class VideoReference(BaseModel):
    """OpenAI's reference to a completed video."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(examples=["video_0123456789abcdef01234567"])


class VideoRemix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="The new prompt.")
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description=f"Fraction of the schedule re-run on the source (default {DEFAULT_EDIT_STRENGTH}).",
    )


class VideoEdit(VideoRemix):
    video: VideoReference | None = Field(
        default=None, description="The completed video to edit; or upload a file as `video` (multipart)."
    )
    model: str | None = None
    seed: int | None = Field(default=None, description="Random seed; omitted = random, reported back.")


class VideoExtend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What happens next.")
    seconds: str | None = Field(
        default=None,
        description="Length of the new segment ('4', '8', '12' as the SDK sends), mapped onto the "
        "model's lengths; omitted = the model's default length.",
    )
    num_frames: int | None = Field(default=None, description="Frames of the new segment; wins over seconds.")
    video: VideoReference | None = Field(
        default=None, description="The completed video to extend; or upload a file as `video` (multipart)."
    )
    model: str | None = None
    seed: int | None = None


def _validate(cls: type[BodyT], data: dict[str, Any]) -> BodyT:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise InvalidRequestError(message, param) from None


class Source:
    """The video a new job starts from: its bytes, its size, length and frame rate, and the earlier
    job it is (None for an upload)."""

    def __init__(self, data: bytes, info: VideoInfo, job: Job | None) -> None:
        self.data, self.info, self.job = data, info, job

    @property
    def size(self) -> str:
        return self.job.size if self.job is not None else f"{self.info.width}x{self.info.height}"

    @property
    def fps(self) -> int:
        if self.job is not None and self.job.fps:
            return self.job.fps
        return max(1, min(120, round(self.info.fps)))


async def _resolve_source(
    context: AppContext, caller: Caller, ref: VideoReference | None, upload: bytes | None, verb: str
) -> Source:
    """The referenced completed video of this caller (404 / 409 otherwise) or the uploaded one
    (422 if it cannot be read)."""
    if ref is not None and upload is not None:
        raise InvalidRequestError(
            "send the source video either as a file or as {'id': ...}, not both", "video"
        )
    if upload is not None:
        try:
            info = await run_in_threadpool(probe_video, upload)
        except ValueError as exc:
            raise InvalidRequestError(f"video: {exc}", "video") from None
        return Source(upload, info, None)
    if ref is None:
        raise InvalidRequestError(
            f"video is required: the video to {verb} ({{'id': ...}} or a file)", "video"
        )
    job = context.owned_job(ref.id, caller)
    if status_of(job) != JobStatus.COMPLETED:
        raise ConflictError(
            f"video {job.id} is {status_of(job)}: only a completed video can be used to {verb}",
            "video_not_completed",
            "video",
        )
    try:
        data = await run_in_threadpool(_read_video, context, job.id)
        info = await run_in_threadpool(probe_video, data)
    except StorageError as exc:
        raise ServiceUnavailableError(
            f"video {job.id} cannot be read from storage now", "storage_error"
        ) from exc
    except ValueError as exc:  # a stored video we cannot decode: ours, so a server-side problem
        raise ServiceUnavailableError(f"video {job.id} cannot be decoded: {exc}", "storage_error") from exc
    return Source(data, info, job)


def _read_video(context: AppContext, job_id: str) -> bytes:
    with context.storage.video_file(job_id) as path:
        return path.read_bytes()


def edit_frames(source_frames: int, limits: ModelLimits) -> int:
    """The longest of the model's lengths an edit of a `source_frames`-frame video can take (its
    first frames are re-noised; a longer source is cut), a video length unless the source is one
    frame; a 422 when the source is shorter than all of them."""
    counts = limits.frame_counts or tuple(range(1, limits.max_frames + 1, TIME_STRIDE))
    fitting = [n for n in counts if n <= source_frames]
    moving = [n for n in fitting if n > 1]
    if not fitting:
        raise InvalidRequestError(
            f"video: the source has {source_frames} frames, fewer than this model's shortest length "
            f"({min(counts)} frames)",
            "video",
        )
    return max(moving or fitting)


def _model_for(context: AppContext, asked: str | None, source: Source) -> ServedModel:
    """The model a derived job runs on: the one the request names, else the source video's (when
    it is still served), else the default."""
    if asked is not None:
        return context.models.choose(asked)
    if source.job is not None:
        return context.models.find(source.job.model) or context.model
    return context.model


def _check_extends(model: ServedModel) -> None:
    if not model.supports_image:
        raise InvalidRequestError(
            f"model {model.name!r} cannot extend a video: it takes no image condition", "video"
        )


SourceBodyT = TypeVar("SourceBodyT", VideoEdit, VideoExtend)


async def _source_request(
    request: Request, caller: Caller, context: AppContext, cls: type[SourceBodyT], verb: str
) -> tuple[SourceBodyT, Source, ServedModel]:
    """An edit's or extension's body, its source video and the model it runs on (an extension's
    model checked for an image condition, before the source is read when the model is known)."""
    context.limiter.check_rate(caller.owner)
    body = await parse_source_body(request, context.settings.max_upload_bytes)
    fields = _validate(cls, body.fields)
    if verb == "extend" and (fields.model is not None or len(context.models) == 1):
        _check_extends(context.models.choose(fields.model))
    source = await _resolve_source(context, caller, fields.video, body.video, verb)
    model = _model_for(context, fields.model, source)
    if verb == "extend":
        _check_extends(model)
    return fields, source, model


async def _submit(
    context: AppContext,
    caller: Caller,
    plan: GenerationPlan,
    source: Source,
    operation: Operation,
    extra: dict[str, Any],
    model: ServedModel,
    image: bytes | None = None,
) -> Response:
    """Create and queue the job for `plan` on `source` (its bytes stored as the job's source)."""
    request = {**plan_to_request_dict(plan), **extra}
    frames = plan.num_frames
    if operation == "extend":
        frames = source.info.num_frames + plan.num_frames - 1  # the stitched video
        if frames > MAX_SOURCE_FRAMES:
            raise InvalidRequestError(
                f"the extended video would have {frames} frames, over the limit of {MAX_SOURCE_FRAMES}",
                "seconds",
            )
    context.limiter.check_queue(caller.owner, context.jobs.queued_count(caller.owner))
    job = Job(
        id=new_job_id(),
        owner=caller.owner,
        model=model.name,
        status=JobStatus.QUEUED,
        progress=0,
        created_at=now(),
        request=request,
        prompt=plan.prompt,
        size=f"{plan.width}x{plan.height}",
        seconds=duration_text(frames, plan.fps),
        num_frames=frames,
        fps=plan.fps,
        operation=operation,
        source_video_id=source.job.id if source.job is not None else None,
    )
    await store_and_enqueue(context, job, image, source.data)
    metrics.job_submitted(job.model, operation)
    logger.info(
        "job %s queued for %s: %s of %s, %s %d frames",
        job.id,
        caller.label,
        operation,
        job.source_video_id or "an upload",
        job.size,
        frames,
        extra={"job_id": job.id},
    )
    return video_response(job, context, 201, Location=f"/v1/videos/{job.id}")


_RESPONSES = error_responses(401, 404, 409, 413, 415, 422, 429, 503)


@router.post(
    "/videos/{video_id}/remix",
    status_code=201,
    response_model=VideoPublic,
    summary="Remix a video",
    description="A new job from a completed video and a new prompt: the same size, length, seed and "
    "input image; the source's frames re-noised to `strength` and denoised with the new prompt.",
    responses=_RESPONSES,
)
async def remix_video(video_id: str, request: Request, caller: CallerDep, context: ContextDep) -> Response:
    context.limiter.check_rate(caller.owner)
    body = await parse_source_body(request, context.settings.max_upload_bytes)
    if body.video is not None:
        raise InvalidRequestError(
            "a remix takes no uploaded video: it remixes the video in the path", "video"
        )
    remix = _validate(VideoRemix, body.fields)
    source = await _resolve_source(context, caller, VideoReference(id=video_id), None, "remix")
    assert source.job is not None
    model = _model_for(context, None, source)
    asked: dict[str, Any] = source.job.request or {}
    try:
        image = await run_in_threadpool(context.storage.load_input_image, source.job.id)
    except StorageError as exc:
        raise ServiceUnavailableError("the source's input image cannot be read now", "storage_error") from exc
    frames = (
        source.job.num_frames
        if source.job.operation != "extend"
        else edit_frames(source.info.num_frames, model.limits)
    )
    create = VideoCreate(
        prompt=remix.prompt,
        size=source.job.size,
        num_frames=frames,
        fps=asked.get("fps"),
        steps=asked.get("steps"),
        guidance=asked.get("guidance"),
        seed=asked.get("seed"),
        negative_prompt=asked.get("negative_prompt") or None,
        loras=asked.get("loras") or None,  # a remix keeps its source's adapters
    )
    plan = build_plan(create, image, model)
    extra = {"video_mode": "edit", "strength": remix.strength or DEFAULT_EDIT_STRENGTH}
    return await _submit(context, caller, plan, source, "remix", extra, model, image)


@router.post(
    "/videos/edits",
    status_code=201,
    response_model=VideoPublic,
    summary="Edit a video",
    description="Video-to-video with a new prompt on a completed video (`video: {id}`) or an uploaded "
    "file (`video`): the source's size and length mapped onto the model's, its frames re-noised "
    "to `strength` and denoised with the prompt.",
    responses=_RESPONSES,
)
async def edit_video(request: Request, caller: CallerDep, context: ContextDep) -> Response:
    edit, source, model = await _source_request(request, caller, context, VideoEdit, "edit")
    create = VideoCreate(
        prompt=edit.prompt,
        model=model.name,
        size=source.size,
        num_frames=edit_frames(source.info.num_frames, model.limits),
        fps=source.fps,
        seed=edit.seed,
    )
    plan = build_plan(create, None, model)
    extra = {"video_mode": "edit", "strength": edit.strength or DEFAULT_EDIT_STRENGTH}
    return await _submit(context, caller, plan, source, "edit", extra, model)


@router.post(
    "/videos/extensions",
    status_code=201,
    response_model=VideoPublic,
    summary="Extend a video",
    description="Continue a completed video (`video: {id}`) or an uploaded one by `seconds` more: "
    "image-to-video from its last frame, stitched behind it into one MP4 (the new segment's first "
    "frame takes the place of the source's last). `num_frames` of the result counts both.",
    responses=_RESPONSES,
)
async def extend_video(request: Request, caller: CallerDep, context: ContextDep) -> Response:
    extend, source, model = await _source_request(request, caller, context, VideoExtend, "extend")
    create = VideoCreate(
        prompt=extend.prompt,
        model=model.name,
        size=source.size,
        seconds=extend.seconds,
        num_frames=extend.num_frames,
        fps=source.fps,
        seed=extend.seed,
    )
    plan = build_plan(create, None, model)
    if plan.num_frames == 1:
        raise InvalidRequestError("an extension needs more than one frame", "num_frames")
    return await _submit(context, caller, plan, source, "extend", {"video_mode": "extend"}, model)
