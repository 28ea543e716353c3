"""Every error the API returns has one shape: `{"error": {"code", "message", "param", "type"}}`.

Route code raises `APIError` (or one of its named subclasses); FastAPI's own validation errors and
Starlette's HTTP errors are rewritten into the same shape, so clients (and the OpenAI SDK, which
reads `error.message`) see one format everywhere.

An error that the same request can never get past (`NO_RETRY_STATUSES`: a bad value, a missing key,
no such video, a cancelled video's content, a feature this server does not have) says so with
`x-should-retry: false`, which the OpenAI SDK obeys: without it the SDK retries every 409 and 5xx
(501 included) with backoff, so such a call would fail only after a second or more. Timeouts (408),
rate limits (429) and the 5xx of a backend that failed (500, 503) go without it: a retry may work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from hyv.service.storage import StorageError

logger = logging.getLogger(__name__)

# HTTP status -> the OpenAI-style error "type" clients switch on.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    416: "invalid_request_error",
    422: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
    503: "service_unavailable_error",
}
NO_RETRY_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 416, 422, 501})


class APIError(Exception):
    """An error response: HTTP status, a stable machine-readable code, a message naming the value."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


class InvalidRequestError(APIError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(422, code, message, param)


class NotFoundError(APIError):
    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(404, code, message)


class ConflictError(APIError):
    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(409, code, message, param)


class TooLargeError(APIError):
    def __init__(self, message: str, code: str = "request_too_large", param: str | None = None) -> None:
        super().__init__(413, code, message, param)


class UnsupportedFeatureError(APIError):
    """501: a part of OpenAI's API (or another /v1 route) this server does not offer, named."""

    def __init__(self, message: str, code: str = "unsupported_feature", param: str | None = None) -> None:
        super().__init__(501, code, message, param)


class ServiceUnavailableError(APIError):
    """503: a backend the request needs (object storage, the queue) failed; retrying may work."""

    def __init__(self, message: str, code: str, retry_after: int = 5) -> None:
        super().__init__(503, code, message, headers={"Retry-After": str(max(1, retry_after))})


class TooManyRequestsError(APIError):
    def __init__(self, message: str, retry_after: int, code: str = "rate_limit_exceeded") -> None:
        super().__init__(429, code, message, headers={"Retry-After": str(max(1, retry_after))})


def error_body(status_code: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "param": param,
            "type": _TYPES.get(status_code, "api_error"),
        }
    }


def retry_headers(status_code: int) -> dict[str, str]:
    """`x-should-retry: false` for the statuses a retry cannot fix (NO_RETRY_STATUSES), else none."""
    return {"x-should-retry": "false"} if status_code in NO_RETRY_STATUSES else {}


def error_response(
    status_code: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status_code, code, message, param),
        status_code,
        headers={**retry_headers(status_code), **(headers or {})},
    )


def _param_from_loc(loc: Sequence[Any]) -> str | None:
    """("body", "steps") -> "steps"; ("query", "limit") -> "limit"."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """pydantic errors -> one readable message naming every offending field and value."""
    messages = []
    param = None
    for error in errors:
        field = _param_from_loc(error.get("loc", ()))
        param = param or field
        text = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") in ("missing",):
            messages.append(f"{field} is required")
        elif "input" in error and error.get("type") not in ("extra_forbidden",) and field is not None:
            messages.append(f"{field}: {text} (got {_short(error['input'])})")
        elif error.get("type") == "extra_forbidden":
            messages.append(f"unknown field {field!r}")
        else:
            messages.append(f"{field}: {text}" if field else text)
    return "; ".join(messages) or "invalid request", param


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status_code, exc.code, exc.message, exc.param, exc.headers)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = validation_message(exc.errors())
    return error_response(422, "invalid_value", message, param)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        allowed = _allowed_methods(request, headers.pop("Allow", None) or headers.pop("allow", None))
        message = f"{request.method} is not allowed on {request.url.path}"
        if allowed:
            headers["Allow"] = allowed
            message += f"; it takes {allowed}"
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message, None, headers)


def _allowed_methods(request: Request, allow: str | None) -> str | None:
    """Every method the API takes on the request's path: Starlette's `Allow` names only those of the
    first route whose path matches (GET of /v1/videos/{id}, not its DELETE), so add the methods the
    OpenAPI document lists for every path template that matches."""
    methods = {m.strip().upper() for m in (allow or "").split(",")} & set(_METHOD_ORDER)
    try:
        paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    except Exception:  # the 405 still goes out, with Starlette's list
        logger.exception("cannot read the OpenAPI document for an Allow header")
        paths = {}
    for template, operations in paths.items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in operations if m.upper() in _METHOD_ORDER}
    return ", ".join(sorted(methods, key=_METHOD_ORDER.index)) or None


_METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


async def _storage_handler(request: Request, exc: Exception) -> JSONResponse:
    """A StorageError no route turned into an APIError: still 503 `storage_error`, never a 500."""
    logger.error("storage error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "storage_error", "the storage backend failed; retry later", None)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(StorageError, _storage_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
