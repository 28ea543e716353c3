"""GET /readyz on a live API: public (probes send no key), so without a valid key it says only
whether the service is ready, with counts; with a key (or on a server without keys, which listens
on loopback only) it also names the failing worker and its error, with file paths cut to their
last part. Workers are played by their heartbeats in the real registry (what
hyv.service.worker_process writes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from hyv.service.api.app import create_app
from hyv.service.api.routes_system import redact_paths
from tests.service.conftest_api import KEY_A, auth

pytestmark = pytest.mark.timeout(60)

WEIGHTS = "/srv/secret-mount/models/hyv-weights"
LOAD_ERROR = (
    f"cannot load {WEIGHTS}: FileNotFoundError: [Errno 2] No such file or directory: "
    f"'{WEIGHTS}/dit/config.json'"
)
SECRETS = ("secret-mount", "/srv", "gpu-box-7", "FileNotFoundError", "config.json", "hyv-weights", "hyv-tiny")


def beat(settings: Any, hostname: str, ready: bool, load_error: str | None = None) -> None:
    """A worker's heartbeat, as WorkerProcess.info() writes it."""
    from hyv.service.job_store import JobStore

    info = {"hostname": hostname, "model": settings.model_name, "ready": ready, "load_error": load_error}
    JobStore.from_url(settings.redis_url).workers.heartbeat(hostname, info, ttl_seconds=60)


def test_without_a_key_only_the_status_and_counts(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    settings = make_api_settings()
    server = serve_app(settings)
    beat(settings, "gpu-box-7", ready=False, load_error=LOAD_ERROR)
    with httpx.Client(base_url=server.url, timeout=10) as public:
        for headers in ({}, auth("not-a-key"), {"Authorization": "Basic eA=="}):
            answer = public.get("/readyz", headers=headers)
            assert answer.status_code == 503
            assert answer.json() == {
                "status": "unavailable",
                "workers": 1,
                "workers_ready": 0,
                "workers_failed": 1,
                "queue_depth": 0,
                "reason": "1 worker(s) could not load the model",
            }
            assert not any(secret in answer.text for secret in SECRETS), answer.text

        detailed = public.get("/readyz", headers=auth(KEY_A))
        assert detailed.status_code == 503
        body = detailed.json()
        assert body["model"] == "hyv-tiny"
        error = (
            "cannot load hyv-weights: FileNotFoundError: [Errno 2] No such file or directory: 'config.json'"
        )
        assert body["load_errors"] == [{"worker": "gpu-box-7", "error": error}]
        assert body["reason"] == f"1 worker(s) could not load 'hyv-tiny': {error}"
        assert "/srv" not in detailed.text and "secret-mount" not in detailed.text

        beat(settings, "gpu-box-8", ready=True)
        ready = public.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "workers": 2,
            "workers_ready": 1,
            "workers_failed": 1,
            "queue_depth": 0,
        }
        assert public.get("/readyz", headers=auth(KEY_A)).json()["load_errors"][0]["worker"] == "gpu-box-7"


def test_without_keys_configured_the_details_are_shown(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    """No HYV_API_KEYS: the server listens on loopback only (hyv.service.api.auth.check_bind), so
    whoever reaches it is on this machine; there is no key to ask for."""
    settings = make_api_settings(api_keys=[])
    server = serve_app(settings)
    beat(settings, "gpu-box-7", ready=False, load_error=LOAD_ERROR)
    answer = httpx.get(f"{server.url}/readyz", timeout=10)
    assert answer.status_code == 503
    assert answer.json()["load_errors"][0]["worker"] == "gpu-box-7"
    assert "FileNotFoundError" in answer.json()["reason"] and "/srv" not in answer.text


def test_redis_unreachable_says_so_without_its_address(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any], tmp_path: Path
) -> None:
    app = create_app(make_api_settings())
    socket_path = tmp_path / "private" / "redis.sock"  # nothing listens there
    app.state.context.redis = redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1)
    server = serve_app(app)
    public = httpx.get(f"{server.url}/readyz", timeout=10)
    assert public.status_code == 503
    assert public.json() == {"status": "unavailable", "reason": "redis unreachable"}
    detailed = httpx.get(f"{server.url}/readyz", headers=auth(KEY_A), timeout=10)
    assert detailed.status_code == 503
    assert "redis.sock" in detailed.json()["reason"] and str(tmp_path) not in detailed.text


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            LOAD_ERROR,
            "cannot load hyv-weights: FileNotFoundError: [Errno 2] No such file or directory: 'config.json'",
        ),
        (
            "SafetensorError reading /data/w/dit/model.safetensors",
            "SafetensorError reading model.safetensors",
        ),
        ("(/a/b/c), ~/models/x, /srv/hyv/", "(c), x, hyv"),
        ("Error 111 connecting to 127.0.0.1:6379. Connection refused.", None),  # no path: unchanged
        ("redis://cache:6379/0 and https://example.com/a/b", None),  # URLs are not paths
        ("weights/dit is relative", None),
        (json.dumps({"path": "/x/y.json"}), '{"path": "y.json"}'),
    ],
)
def test_redact_paths(text: str, redacted: str | None) -> None:
    assert redact_paths(text) == (text if redacted is None else redacted)
