"""Fixtures for the reliability tests (hostile input, auth, schema): the API tests' real
redis-server and tiny bundle (tests/service/conftest_api.py), plus

    hostile_server   one uvicorn server for a whole module, with small body/upload limits and the
                     served model marked image-capable (the tiny bundle is text-to-video only, so
                     without this every image would be refused before it is decoded); attacks
                     accumulate on it, so "still healthy afterwards" means something
    healthy(client)  asserts /healthz is ok and that a valid submission and its status read work
    error_of(resp)   the {"error": {"code", "message", "param", "type"}} body, asserted
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest_api import KEY_A, KEY_B, LiveServer, auth

MAX_BODY_BYTES = 2 * 2**20
MAX_UPLOAD_BYTES = 1 * 2**20
VALID = {"prompt": "a red circle moving left", "size": "32x32", "num_frames": 5}
ERROR_FIELDS = {"code", "message", "param", "type"}


def make_reliability_settings(redis_url: str, bundle: Path, data_dir: Path, **overrides: Any) -> Any:
    from hyv.service.settings import Settings

    values: dict[str, Any] = {
        "redis_url": redis_url,
        "data_dir": data_dir,
        "weights": bundle,
        "model_name": "hyv-tiny",
        "api_keys": [KEY_A, KEY_B],
        "rate_limit_per_minute": 0,
        "max_queued_jobs_per_key": 100_000,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_upload_bytes": MAX_UPLOAD_BYTES,
    }
    values.update(overrides)
    return Settings(**values)


def image_capable_app(settings: Any) -> Any:
    from hyv.service.api.app import create_app

    app = create_app(settings)
    context = app.state.context
    context.model = dataclasses.replace(context.model, supports_image=True)
    return app


@pytest.fixture(scope="module")
def hostile_server(
    api_redis_url: str, tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    import redis

    redis.Redis.from_url(api_redis_url).flushdb()
    settings = make_reliability_settings(
        api_redis_url, tiny_bundle_dir, tmp_path_factory.mktemp("reliability-data")
    )
    server = LiveServer(image_capable_app(settings)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(hostile_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, headers=auth(KEY_A), timeout=30) as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers.get("content-type", "").startswith("application/json"), response.text[:300]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_FIELDS, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    assert error["param"] is None or isinstance(error["param"], str), body
    return dict(error)


def healthy(client: httpx.Client) -> None:
    """The service still works: liveness, a valid submission, and reading it back."""
    assert client.get("/healthz").status_code == 200
    created = client.post("/v1/videos", json=VALID)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    read = client.get(f"/v1/videos/{job_id}")
    assert read.status_code == 200 and read.json()["status"] == "queued", read.text


def raw_request(server: LiveServer, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send bytes as they are; read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s) as sock:
        # The server may refuse early and close: what it sent is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        sock.settimeout(1.0)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    assert received, "no response at all"
    return received
