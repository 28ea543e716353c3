"""The API when something around it fails or is asked unusually: the broker refusing a job (the
Idempotency-Key is released), object storage failing or slow (503 `storage_error`, the event loop
still serving), HEAD on a video's content, and an API process that never imports torch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from hyv.service.job_model import JobStatus
from hyv.service.job_store import JobStore
from hyv.service.settings import queue_name
from tests.service.conftest_api import KEY_A, auth
from tests.service.test_api_content import FakeWorkerSide, mp4_pieces, submit

pytestmark = pytest.mark.timeout(120)


def test_the_api_process_never_imports_torch(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from hyv.service.api.app import create_app\n"
        "from hyv.service.settings import Settings\n"
        f"create_app(Settings(redis_url='redis://127.0.0.1:1/0', weights={str(tiny_bundle_dir)!r}, "
        f"data_dir={str(tmp_path)!r}))\n"
        "heavy = ('torch', 'hyv.models', 'hyv.engine.pipeline', 'hyv.engine.bundle', 'hyv.service.worker')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith('torch.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the broker refuses the job ------------------------------------------------------------------


def test_a_failed_enqueue_releases_the_idempotency_key(api: httpx.Client, api_redis_url: str) -> None:
    broker = redis.Redis.from_url(api_redis_url)
    queue = queue_name("hyv-tiny")  # Celery's list for the model's queue in the broker
    broker.set(queue, b"not a list")  # the broker's LPUSH of the task now fails (WRONGTYPE)
    body = {"prompt": "a green square", "size": "32x32", "num_frames": 5}
    headers = {"Idempotency-Key": "order-99"}

    failed = api.post("/v1/videos", json=body, headers=headers)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "queue_unavailable"
    assert failed.headers["retry-after"]
    assert api.get("/v1/videos").json()["data"] == []  # no job was left behind, queued forever

    broker.delete(queue)  # the broker is back
    retried = api.post("/v1/videos", json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    replayed = api.post("/v1/videos", json=body, headers=headers)
    assert replayed.status_code == 200 and replayed.json()["id"] == retried.json()["id"]
    assert broker.llen(queue) == 1


# --- HEAD on the content -------------------------------------------------------------------------


@pytest.fixture
def env(make_api_settings: Any, serve_app: Any) -> Iterator[tuple[httpx.Client, FakeWorkerSide]]:
    settings = make_api_settings()
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client, FakeWorkerSide(settings)


def test_head_of_a_video_answers_its_headers_only(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    client, worker = env
    vid = submit(client)
    url = f"/v1/videos/{vid}/content"
    queued = client.head(url)
    assert queued.status_code == 200 and queued.headers["x-video-status"] == "queued"
    assert queued.headers["content-type"] == "video/mp4" and "content-length" not in queued.headers
    assert client.head(url, params={"variant": "thumbnail"}).status_code == 409  # not ready

    writer = worker.start(vid)
    mp4 = b"".join(mp4_pieces())
    writer.write(mp4)
    worker.complete(vid, writer)
    head = client.head(url)
    full = client.get(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == full.headers["content-length"] == str(len(mp4))
    assert head.headers["etag"] == full.headers["etag"]
    assert head.headers["accept-ranges"] == "bytes" and head.headers["content-type"] == "video/mp4"
    assert client.head(url, headers={"If-None-Match": head.headers["etag"]}).status_code == 304
    assert client.head(url, params={"variant": "thumbnail"}).status_code == 404  # none was made
    assert client.head(f"/v1/videos/video_{'0' * 24}/content").status_code == 404

    other = submit(client)
    worker.store.jobs.update(other, status=JobStatus.FAILED, error_code="internal_error")
    assert client.head(f"/v1/videos/{other}/content").status_code == 409


# --- object storage failing, slowly --------------------------------------------------------------


@dataclass
class FailingS3:
    """An S3 endpoint that answers every request with a 500 after `delay_s` (boto3 retries it)."""

    delay_s: float
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> FailingS3:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _fail(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append(f"{self.command} {self.path}")
                time.sleep(outer.delay_s)
                body = b"<Error><Code>InternalError</Code><Message>we are down</Message></Error>"
                self.send_response(500)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._fail()

            def do_HEAD(self) -> None:
                self._fail()

            def do_PUT(self) -> None:
                self._fail()

            def do_POST(self) -> None:
                self._fail()

            def do_DELETE(self) -> None:
                self._fail()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@pytest.fixture
def failing_s3_api(
    make_api_settings: Callable[..., Any], serve_app: Any
) -> Iterator[tuple[httpx.Client, JobStore, FailingS3]]:
    s3 = FailingS3(delay_s=0.4).start()
    settings = make_api_settings(
        storage="s3",
        s3_endpoint_url=s3.url,
        s3_bucket="hyv-down",
        s3_region="us-east-1",
        s3_access_key_id="AKIATESTTESTTESTTEST",
        s3_secret_access_key="not-checked",
    )
    server = serve_app(settings)
    try:
        with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=60) as client:
            yield client, JobStore.from_url(settings.redis_url), s3
    finally:
        s3.stop()


def test_s3_failures_answer_503_storage_error_and_never_block_the_loop(
    failing_s3_api: tuple[httpx.Client, JobStore, FailingS3],
) -> None:
    client, store, s3 = failing_s3_api
    vid = submit(client)  # no image: nothing goes to S3
    store.jobs.update(vid, status=JobStatus.COMPLETED, progress=100, completed_at=int(time.time()))

    answers: dict[str, httpx.Response] = {}
    deleting = threading.Thread(target=lambda: answers.update(delete=client.delete(f"/v1/videos/{vid}")))
    deleting.start()
    deadline = time.monotonic() + 10
    while not s3.requests:  # the DELETE now waits on S3 (0.4 s per attempt, retried)...
        assert time.monotonic() < deadline, "the API never called S3"
        time.sleep(0.01)
    started = time.monotonic()
    health = client.get("/healthz")  # ...in a worker thread: the event loop still answers
    assert health.status_code == 200 and time.monotonic() - started < 0.3
    assert deleting.is_alive()
    deleting.join(30)

    deleted = answers["delete"]
    assert deleted.status_code == 503, deleted.text
    assert deleted.json()["error"]["code"] == "storage_error" and deleted.headers["retry-after"]
    assert len(s3.requests) >= 2  # boto3 retried before giving up
    assert client.get(f"/v1/videos/{vid}").json()["status"] == "completed"  # kept: retry the delete

    thumbnail = client.get(f"/v1/videos/{vid}/content", params={"variant": "thumbnail"})
    assert thumbnail.status_code == 503 and thumbnail.json()["error"]["code"] == "storage_error"
    assert client.head(f"/v1/videos/{vid}/content").status_code == 503


def test_cors_preflight_allows_every_method_the_api_answers(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    """A page on another origin may HEAD a video (its size before a ranged download) like GET it."""
    origin = "http://page.example"
    server = serve_app(make_api_settings(cors_origins=[origin]))
    for method in ("GET", "HEAD", "POST", "DELETE"):
        response = httpx.options(
            f"{server.url}/v1/videos/video_x/content",
            headers={"Origin": origin, "Access-Control-Request-Method": method},
        )
        assert response.status_code == 200, (method, response.text)
        assert method in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-allow-origin"] == origin
    evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    refused = httpx.options(f"{server.url}/v1/videos", headers=evil)
    assert refused.status_code == 400
