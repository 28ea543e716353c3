"""POST /v1/videos bodies: multipart/form-data (the OpenAI SDK's encoding) or JSON, one model.

Multipart: text fields by name plus the image as the `input_reference` file part (or a data URL in
`input_reference[image_url]`, how the SDK encodes OpenAI's reference object). JSON: the image as a
base64 data URL. Empty form values count as omitted. The image is checked against the upload
limit; the whole body against the body limit by `BodyLimitMiddleware`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from hyv.service.api.errors import APIError, InvalidRequestError, TooLargeError, validation_message
from hyv.service.api.schemas import VideoCreate
from hyv.service.api.validation import decode_data_url

MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class CreateBody:
    video: VideoCreate
    image: bytes | None

    def fingerprint(self) -> str:
        """A hash of what was asked (not of the encoding), to compare idempotent retries: the same
        fields and image sent as multipart with another boundary, or as JSON, match."""
        fields = self.video.model_dump(exclude_none=True, exclude={"input_reference"})
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        digest.update(b"\x00image:" + (hashlib.sha256(self.image).digest() if self.image else b"none"))
        return digest.hexdigest()


def _body_kind(request: Request) -> str:
    """The body's encoding by the request's Content-Type: "json" or "form"; a 415 naming it otherwise."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return "form"
    if content_type == "application/json" or content_type.endswith("+json"):
        return "json"
    raise APIError(
        415,
        "unsupported_media_type",
        f"Content-Type must be multipart/form-data or application/json, got {content_type or 'none'!r}",
    )


async def parse_create_body(request: Request, max_upload_bytes: int) -> CreateBody:
    if _body_kind(request) == "form":
        return await _parse_form(request, max_upload_bytes)
    return await _parse_json(request, max_upload_bytes)


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # e.g. [[[[...]]]] 100000 deep
        raise InvalidRequestError("body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"body must be a JSON object, got {type(data).__name__}", code="invalid_json"
        )
    return data


async def _parse_json(request: Request, max_upload_bytes: int) -> CreateBody:
    video = _validate(await _json_object(request))
    image = decode_data_url(video.input_reference, max_upload_bytes) if video.input_reference else None
    return CreateBody(video, image)


async def _read_form(request: Request, files_hint: str) -> FormData:
    """The multipart (or urlencoded) form, within the field and file limits; a 413 or 422 naming
    the problem otherwise. `files_hint` says which part takes the file."""
    try:
        return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except (MultiPartException, StarletteHTTPException) as exc:
        # Inside an app Starlette re-raises its MultiPartException as a bare HTTPException(400).
        if isinstance(exc, StarletteHTTPException) and exc.status_code != 400:
            raise
        message = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        if "exceeded maximum size" in message:
            raise TooLargeError(
                f"a multipart field is over the limit of {MAX_FIELD_BYTES // 1024} KB ({files_hint})",
                "field_too_large",
            ) from None
        raise InvalidRequestError(f"malformed multipart body: {message}", code="invalid_multipart") from None


async def _parse_form(request: Request, max_upload_bytes: int) -> CreateBody:
    form = await _read_form(request, "upload images as the input_reference file")
    data: dict[str, Any] = {}
    lora_fields: list[tuple[str, str]] = []
    image: bytes | None = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise InvalidRequestError(
                        f"unexpected file field {name!r}; send the image as input_reference", name
                    )
                image = await _read_upload(value, max_upload_bytes)
            elif name == "input_reference[image_url]":
                data["input_reference"] = {"image_url": value}
            elif name == "input_reference[file_id]":
                data["input_reference"] = {"file_id": value}
            elif name in LORA_FORM_FIELDS:
                lora_fields.append((name, value))
            elif name in ("cache[mode]", "cache[threshold]"):  # the OpenAI SDK's flattened object
                cache = data.setdefault("cache", {})
                if not isinstance(cache, dict):
                    raise InvalidRequestError("cache: send `cache` or `cache[...]` fields, not both", "cache")
                cache[name[len("cache[") : -1]] = value
            elif value != "":
                data[name] = value
    finally:
        await form.close()
    if lora_fields:
        data["loras"] = _form_loras(lora_fields)
    video = _validate(data)
    if image is None and video.input_reference is not None:
        image = decode_data_url(video.input_reference, max_upload_bytes)
    return CreateBody(video, image)


async def _read_upload(upload: UploadFile, max_upload_bytes: int, field: str = "input_reference") -> bytes:
    if upload.size is not None and upload.size > max_upload_bytes:
        raise TooLargeError(
            f"{field} is {upload.size} bytes, over the upload limit of {max_upload_bytes}",
            "upload_too_large",
            field,
        )
    data = await upload.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise TooLargeError(
            f"{field} is over the upload limit of {max_upload_bytes} bytes", "upload_too_large", field
        )
    if not data:
        raise InvalidRequestError(f"{field} is an empty file", field)
    return data


@dataclass(frozen=True)
class SourceBody:
    """The body of a remix, edit or extension: its fields, and the source video when uploaded."""

    fields: dict[str, Any]
    video: bytes | None


async def parse_source_body(request: Request, max_upload_bytes: int) -> SourceBody:
    """JSON (`{"prompt": ..., "video": {"id": ...}}`) or multipart, which the OpenAI SDK sends: the
    video as a `video` file part or as a `video[id]` field. The route validates the fields."""
    if _body_kind(request) == "json":
        return SourceBody(await _json_object(request), None)
    form = await _read_form(request, "upload the source video as the video file")
    fields: dict[str, Any] = {}
    video: bytes | None = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "video":
                    raise InvalidRequestError(
                        f"unexpected file field {name!r}; send the source video as the video file", name
                    )
                video = await _read_upload(value, max_upload_bytes, "video")
            elif name == "video[id]":
                fields["video"] = {"id": value}
            elif value != "":
                fields[name] = value
    finally:
        await form.close()
    return SourceBody(fields, video)


LORA_FORM_FIELDS = ("loras", "loras[][name]", "loras[][scale]")


def _form_loras(fields: list[tuple[str, str]]) -> Any:
    """`loras` from a form: one field holding the JSON list, or the OpenAI SDK's flattening of it,
    `loras[][name]` / `loras[][scale]` per entry, which (sent grouped by field name) pairs the k-th
    scale with the k-th name: so every entry gives a scale, or none does (each then 1.0)."""
    names = [value for name, value in fields if name == "loras[][name]"]
    scales = [value for name, value in fields if name == "loras[][scale]"]
    whole = [value for name, value in fields if name == "loras"]
    if whole:
        if names or scales or len(whole) > 1:
            raise InvalidRequestError(
                "loras: send one `loras` JSON field or `loras[][...]` fields, not both", "loras"
            )
        try:
            return json.loads(whole[0])
        except ValueError as exc:
            raise InvalidRequestError(f"loras: not a JSON list: {exc}", "loras") from None
    if scales and len(scales) != len(names):
        raise InvalidRequestError(
            f"loras: {len(names)} names but {len(scales)} scales; in a form give every lora a scale, or none",
            "loras",
        )
    return [{"name": n, **({"scale": scales[i]} if scales else {})} for i, n in enumerate(names)]


def _validate(data: dict[str, Any]) -> VideoCreate:
    try:
        return VideoCreate.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise InvalidRequestError(message, param) from None
