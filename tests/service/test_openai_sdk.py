"""OpenAI's official Python SDK, unchanged, against the service (real Redis, real Celery worker):
videos.create / retrieve / list / delete / download_content / create_and_poll, its error classes,
and its webhook verifier on our signed webhooks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hyv.engine.video_io import read_mp4
from tests.service.conftest_api import KEY_A, KEY_B

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow,
    # The SDK marks the Videos API deprecated (OpenAI is retiring Sora); the calls work the same.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtdGVzdHMtMTIzNDU2Nzg5MA=="


@pytest.fixture
def base_url(service_settings: Any, worker: Any, serve_app: Callable[[Any], Any]) -> str:
    settings = service_settings.model_copy(update={"api_keys": [KEY_A, KEY_B]})
    return f"{serve_app(settings).url}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=base_url, api_key=KEY_A, max_retries=0) as sdk:
        yield sdk


def test_create_and_poll_then_download(client: Any, tmp_path: Path) -> None:
    video = client.videos.create_and_poll(
        prompt="a red circle moving right",
        size="48x32",  # type: ignore[arg-type]  (the SDK's hints list Sora's sizes)
        seconds="1",  # type: ignore[arg-type]
        extra_body={"steps": 3, "seed": 11},
        poll_interval_ms=100,
    )
    assert isinstance(video, openai.types.Video)
    assert video.status == "completed" and video.progress == 100
    assert video.object == "video" and video.model == "hyv-tiny"
    assert video.size == "48x32" and video.seconds == "1"
    assert video.completed_at is not None and video.error is None

    content = client.videos.download_content(video.id)
    target = tmp_path / "clip.mp4"
    content.write_to_file(target)
    assert read_mp4(target).shape == (9, 32, 48, 3)  # 1 s at 8 fps = 9 frames (4n+1)
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    assert thumbnail.content[:8] == b"\x89PNG\r\n\x1a\n"

    again = client.videos.retrieve(video.id)
    assert again.id == video.id and again.status == "completed"


def test_create_retrieve_list_delete(client: Any) -> None:
    created = [
        client.videos.create(prompt=f"a {color} circle", extra_body={"num_frames": 5, "steps": 2})
        for color in ("red", "green", "blue")
    ]
    assert all(v.status in ("queued", "in_progress", "completed") for v in created)
    # Auto-pagination over our cursor (after / has_more / last_id).
    listed = [v.id for v in client.videos.list(limit=2, order="asc")]
    assert [v.id for v in created] == [i for i in listed if i in {v.id for v in created}]
    page = client.videos.list(limit=1)
    assert len(page.data) == 1 and page.has_more is True

    deadline = time.monotonic() + 120
    while client.videos.retrieve(created[-1].id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    deleted = client.videos.delete(created[-1].id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created[-1].id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError) as missing:
        client.videos.retrieve(created[-1].id)
    assert missing.value.status_code == 404
    assert created[-1].id in str(missing.value.body["message"])  # type: ignore[index]


def test_errors_map_to_the_sdks_exceptions(client: Any, base_url: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.videos.create(prompt="a red circle", size="33x32")  # type: ignore[arg-type]
    assert invalid.value.code == "invalid_value" and invalid.value.param == "size"
    assert "got 33" in invalid.value.message
    with pytest.raises(openai.UnprocessableEntityError) as unknown:
        client.videos.create(prompt="a cat playing piano")
    assert (unknown.value.code, unknown.value.param) == ("prompt_outside_vocabulary", "prompt")
    assert "'cat', 'playing', 'piano'" in unknown.value.message
    with (
        openai.OpenAI(base_url=base_url, api_key="not-a-key", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.videos.list()
    video = client.videos.create(prompt="a white square", extra_body={"num_frames": 5, "steps": 2})
    with (
        openai.OpenAI(base_url=base_url, api_key=KEY_B, max_retries=0) as other,
        pytest.raises(openai.NotFoundError),
    ):
        other.videos.retrieve(video.id)
    with pytest.raises(openai.ConflictError):
        for body in ("one", "two"):
            client.videos.create(prompt=body, extra_headers={"Idempotency-Key": "sdk-key"})


def test_async_client(base_url: str) -> None:
    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY_A, max_retries=0) as sdk:
            video = await sdk.videos.create_and_poll(
                prompt="a blue triangle", extra_body={"num_frames": 5, "steps": 2}, poll_interval_ms=100
            )
            content = await sdk.videos.download_content(video.id)
            return video, content.content

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video, data = asyncio.run(run())
    assert video.status == "completed"
    assert read_mp4(data).shape[0] == 5


class Receiver:
    """A local HTTP endpoint that records webhook deliveries, failing the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], str]] = []
        self.fail_first = fail_first
        self.got_one = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.deliveries.append((dict(self.headers.items()), body))
                failing = len(receiver.deliveries) <= receiver.fail_first
                self.send_response(503 if failing else 204)
                self.end_headers()
                if not failing:
                    receiver.got_one.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/video"

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_retries_and_verifies_with_the_sdk() -> None:
    from hyv.service import webhooks

    receiver = Receiver(fail_first=2)
    try:
        event = {"id": "evt_test", "object": "event", "type": "video.completed", "created_at": 1, "data": {}}
        assert webhooks.deliver(
            receiver.url,
            event,
            WEBHOOK_SECRET,
            max_attempts=3,
            backoff_seconds=0.05,
            allowed_hosts=["127.0.0.1"],  # the receiver is on loopback, refused unless allowed
        )
    finally:
        receiver.close()
    assert len(receiver.deliveries) == 3  # two 503s, then accepted
    assert {h["webhook-id"] for h, _ in receiver.deliveries} == {"evt_test"}  # same id on every retry
    headers, body = receiver.deliveries[-1]
    sdk = openai.OpenAI(api_key="unused", webhook_secret=WEBHOOK_SECRET)
    sdk.webhooks.verify_signature(body, headers)  # raises if the signature is wrong
    assert webhooks.verify(WEBHOOK_SECRET, headers, body)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.verify_signature(body.replace("completed", "failed"), headers)

    gone = Receiver(fail_first=99)
    try:
        assert not webhooks.deliver(
            gone.url, event, WEBHOOK_SECRET, max_attempts=2, backoff_seconds=0.01, allowed_hosts=["127.0.0.1"]
        )
    finally:
        gone.close()
    assert len(gone.deliveries) == 2


def test_worker_sends_a_signed_webhook_when_a_job_completes(
    cluster: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    receiver = Receiver()
    try:
        c = cluster(workers=1, webhook_secret=WEBHOOK_SECRET, api_keys=[KEY_A])
        server = serve_app(c.settings)
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY_A, max_retries=0) as sdk:
            video = sdk.videos.create(
                prompt="a cyan circle", extra_body={"num_frames": 5, "steps": 2, "webhook_url": receiver.url}
            )
            assert receiver.got_one.wait(120), "no webhook arrived"
    finally:
        receiver.close()
    headers, body = receiver.deliveries[0]
    openai.OpenAI(api_key="unused").webhooks.verify_signature(body, headers, secret=WEBHOOK_SECRET)
    event = json.loads(body)
    assert event["type"] == "video.completed" and event["object"] == "event"
    assert event["data"]["id"] == video.id and event["data"]["status"] == "completed"
    assert headers["webhook-id"] == event["id"]
