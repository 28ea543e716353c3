"""Pure ASGI middleware: the request body limit (413) and the request metrics.

Both are plain ASGI (not BaseHTTPMiddleware) so streamed responses - the growing MP4 and the SSE
feed - pass through untouched and the per-request cost stays small.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hyv.service.api.errors import error_body, retry_headers

logger = logging.getLogger(__name__)

RequestRecorder = Callable[[str, str, int, float], None]


class BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes`: at once from Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await self._reject(
                    send, f"request body is {int(length)} bytes, over the limit of {self.max_bytes}"
                )
                return
            if _header(scope, b"transfer-encoding") is None:
                # The server reads exactly Content-Length bytes: nothing to count (status polls).
                await self.app(scope, receive, send)
                return
        elif _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body at all (GET, DELETE)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if response_started:
                raise
            await self._reject(send, f"request body is over the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _reject(send: Send, message: str) -> None:
        body = json.dumps(error_body(413, "request_too_large", message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *((k.encode(), v.encode()) for k, v in retry_headers(413).items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Time every HTTP request and record (route template, method, status, seconds).

    The route is the matched path template (`/v1/videos/{video_id}`), never the raw path, so ids
    don't explode the label set; a file under a mounted app (the web page's static files) counts as
    its mount's template (`/web/{path}`); unmatched paths count as "unmatched"."""

    def __init__(self, app: ASGIApp, record: RequestRecorder) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        root_path = scope.get("root_path", "")

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            try:
                self.record(
                    route_template(scope, root_path), scope["method"], status, time.perf_counter() - start
                )
            except Exception:  # metrics must never fail a request
                logger.exception("recording request metrics failed")


def route_template(scope: Scope, root_path: str) -> str:
    """The template of the route that answered a request, read from its scope after the router ran;
    `root_path`: the scope's root_path before it did. A mount (starlette.routing.Mount) extends the
    root_path by its own path, and FastAPI does not record the mount as the scope's route."""
    template = getattr(scope.get("route"), "path", None)
    if template:
        return str(template)
    mounted_at = scope.get("root_path", "")
    if len(mounted_at) > len(root_path) and mounted_at.startswith(root_path):
        return f"{mounted_at[len(root_path) :]}/{{path}}"
    return "unmatched"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
