"""Fixtures for the API tests: a real redis-server, the tiny model bundle on disk, Settings, and
the app served by a real uvicorn server on a free loopback port (streams, SSE and the OpenAI SDK
need a real HTTP server).

The API tests that need no worker use their own Redis (`api_redis_url`): jobs they submit stay
queued, which is what validation, auth, limits and listing tests want.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The folder of every metric of the session (tests/conftest.py normally chose it already).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hyv-test-metrics-"))

KEY_A = "test-key-alpha"
KEY_B = "test-key-bravo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def api_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the API tests (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("api-redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight bundle (32x32 default, <= 64x64, <= 9 frames, T2V only)."""
    from hyv.engine.bundle import init_random_bundle, save_bundle

    return save_bundle(init_random_bundle("tiny"), tmp_path_factory.mktemp("bundle") / "hyv-tiny")


@pytest.fixture(scope="session")
def bucketed_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle served at two sizes (32x32, 48x32) and two lengths (5, 9 frames) only: a
    bundle that lists its buckets, as weights/hyv-small does."""
    from hyv.engine.bundle import init_random_bundle, save_bundle

    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(
        bundle.spec.limits,
        width=32,
        height=32,
        num_frames=5,
        max_width=48,
        max_height=48,
        max_frames=9,
        buckets=((32, 32), (48, 32)),
        frame_counts=(5, 9),
    )
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    return save_bundle(bundle, tmp_path_factory.mktemp("bucketed") / "hyv-tiny")


@pytest.fixture
def make_api_settings(api_redis_url: str, tiny_bundle_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    """Settings on the private Redis (flushed first) and a fresh data dir; keyword overrides."""
    import redis

    from hyv.service.settings import Settings

    redis.Redis.from_url(api_redis_url).flushdb()

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": api_redis_url,
            "data_dir": tmp_path / "data",
            "weights": tiny_bundle_dir,
            "model_name": "hyv-tiny",
            "api_keys": [KEY_A, KEY_B],
            "rate_limit_per_minute": 0,
            "max_queued_jobs_per_key": 100,
        }
        values.update(overrides)
        return Settings(**values)

    return make


class LiveServer:
    """uvicorn serving an app in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], LiveServer]]:
    """serve_app(settings_or_app) -> a started LiveServer (stopped after the test)."""
    servers: list[LiveServer] = []

    def serve(target: Any) -> LiveServer:
        from hyv.service.api.app import create_app
        from hyv.service.settings import Settings

        app = create_app(target) if isinstance(target, Settings) else target
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def api(make_api_settings: Callable[..., Any], serve_app: Callable[[Any], LiveServer]) -> Iterator[Any]:
    """An httpx client on a live API (keys KEY_A and KEY_B; no worker), authenticated as KEY_A."""
    import httpx

    server = serve_app(make_api_settings())
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
