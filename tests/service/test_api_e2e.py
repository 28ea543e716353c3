"""End to end through the API with a real Redis and a real Celery worker process on the tiny model:
submit -> complete -> a valid MP4; watching the MP4 while it renders, and resuming that stream with
a Range; SSE order; cancelling queued and running jobs; readiness; and /metrics after a job."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from hyv.engine.video_io import read_mp4
from tests.service.conftest_api import KEY_A, KEY_B, auth
from tests.service.test_api_content import read_events

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

LONG = {"prompt": "a slow red circle", "size": "64x64", "num_frames": 9, "steps": 1000}


@pytest.fixture
def live(service_settings: Any, worker: Any, serve_app: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    """The API on the shared worker's Redis and data dir, authenticated as KEY_A."""
    settings = service_settings.model_copy(update={"api_keys": [KEY_A, KEY_B]})
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        active: list[str] = []
        client.event_hooks["response"] = [lambda r: _remember(r, active)]
        yield client
        for video_id in active:  # never leave a long job running for the next test
            client.delete(f"/v1/videos/{video_id}")


def _remember(response: httpx.Response, active: list[str]) -> None:
    if response.request.method == "POST" and response.request.url.path == "/v1/videos":
        response.read()
        if response.status_code == 201:
            active.append(response.json()["id"])


def wait_for(
    client: httpx.Client, video_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        video = client.get(f"/v1/videos/{video_id}").json()
        if done(video):
            return video
        assert time.monotonic() < deadline, f"timed out waiting; last state: {video}"
        time.sleep(0.05)


def finished(video: dict[str, Any]) -> bool:
    return video["status"] in ("completed", "failed", "cancelled")


def metric_samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_submit_complete_download_and_metrics(live: httpx.Client) -> None:
    ready = live.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers_ready"] >= 1

    fields = {
        "prompt": "a red circle moving right",
        "size": "48x32",
        "num_frames": "9",
        "steps": "3",
        "seed": "7",
    }
    created = live.post("/v1/videos", data=fields, files={"_": (None, "")})
    assert created.status_code == 201, created.text
    video = wait_for(live, created.json()["id"], finished)
    assert video["status"] == "completed", video
    assert video["progress"] == 100 and video["error"] is None
    assert (video["size"], video["num_frames"], video["steps"], video["seed"]) == ("48x32", 9, 3, 7)
    assert video["completed_at"] >= video["created_at"]
    assert video["expires_at"] > video["completed_at"]
    assert {"text_encode", "denoise", "decode", "encode"} <= set(video["timings"])

    content = live.get(f"/v1/videos/{video['id']}/content")
    assert content.status_code == 200
    assert int(content.headers["content-length"]) == len(content.content) == video["content_bytes"]
    assert read_mp4(content.content).shape == (9, 32, 48, 3)
    thumbnail = live.get(f"/v1/videos/{video['id']}/content", params={"variant": "thumbnail"})
    assert thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (48, 32)

    samples = metric_samples(live.get("/metrics").text)
    assert samples['hyv_jobs_submitted_total{mode="t2v",model="hyv-tiny"}'] >= 1
    assert samples['hyv_jobs_finished_total{model="hyv-tiny",status="completed"}'] >= 1
    assert samples['hyv_requests_total{code="201",method="POST",route="/v1/videos"}'] >= 1
    assert samples['hyv_request_duration_seconds_count{method="GET",route="/v1/videos/{video_id}"}'] >= 1
    assert samples["hyv_denoise_step_seconds_count"] >= 3
    assert 0 < samples["hyv_denoise_step_seconds_sum"] / samples["hyv_denoise_step_seconds_count"] < 30
    for stage in ("text_encode", "denoise", "decode", "encode"):
        assert samples[f'hyv_job_stage_seconds_count{{stage="{stage}"}}'] >= 1
    assert samples["hyv_job_queue_wait_seconds_count"] >= 1
    assert samples["hyv_time_to_first_byte_seconds_count"] >= 1
    assert samples["hyv_workers_ready"] >= 1
    assert 'hyv_queue_depth{queue="hyv.hyv-tiny"}' in samples
    assert any(k.startswith("hyv_worker_busy{") for k in samples)
    resident = [v for k, v in samples.items() if k.startswith("hyv_worker_resident_memory_bytes{worker=")]
    assert resident and min(resident) > 10 * 2**20  # loaded workers


def test_stream_started_while_rendering_is_the_whole_mp4(live: httpx.Client) -> None:
    created = live.post("/v1/videos", json={**LONG, "steps": 150}).json()
    chunks: list[bytes] = []
    with live.stream("GET", f"/v1/videos/{created['id']}/content", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["x-video-status"] in ("queued", "in_progress")
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    data = b"".join(chunks)
    video = live.get(f"/v1/videos/{created['id']}").json()
    assert video["status"] == "completed"
    final = live.get(f"/v1/videos/{created['id']}/content").content
    assert data == final
    assert read_mp4(data).shape == (9, 64, 64, 3)


def test_stream_dropped_mid_render_resumes_with_range(live: httpx.Client) -> None:
    """A client whose connection dropped while the job renders resumes with `Range: bytes=N-` from
    the byte count it received: 206 from there, followed until the job completes. What it got over
    its three connections is the final file, byte for byte."""
    created = live.post("/v1/videos", json={**LONG, "steps": 400}).json()
    url = f"/v1/videos/{created['id']}/content"
    with live.stream("GET", url, timeout=120) as response:  # dropped after its first 100 bytes
        assert response.status_code == 200
        have = next(response.iter_bytes(chunk_size=100))
    assert len(have) == 100
    assert live.get(f"/v1/videos/{created['id']}").json()["status"] == "in_progress"
    # Written already (the MP4's header, while the job denoises): answered at once; dropped again.
    with live.stream("GET", url, headers={"Range": "bytes=100-"}, timeout=120) as response:
        assert response.status_code == 206
        assert response.headers["content-range"] == "bytes 100-*/*"
        assert response.headers["x-video-status"] == "in_progress"
        have += next(response.iter_bytes())
    # Not written yet: answered once the frames are, then followed to the end.
    with live.stream("GET", url, headers={"Range": f"bytes={len(have)}-"}, timeout=120) as response:
        assert response.status_code == 206
        assert response.headers["content-range"].startswith(f"bytes {len(have)}-")
        have += response.read()
    video = wait_for(live, created["id"], finished)
    assert video["status"] == "completed", video
    final = live.get(url).content
    assert have == final and len(final) == video["content_bytes"]
    assert read_mp4(have).shape == (9, 64, 64, 3)


def test_events_follow_the_stages_in_order(live: httpx.Client) -> None:
    created = live.post("/v1/videos", json={**LONG, "steps": 20}).json()
    with live.stream("GET", f"/v1/videos/{created['id']}/events", timeout=120) as response:
        events = list(read_events(response))
    names = [e["event"] for e in events]
    assert names[-1] == "video.completed" and set(names[:-1]) == {"video.progress"}
    statuses = [e["data"]["status"] for e in events]
    order = ["queued", "in_progress", "completed"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    stages = ["text_encode", "denoise", "decode", "encode"]
    seen = [stages.index(e["data"]["stage"]) for e in events if e["data"]["stage"]]
    assert seen == sorted(seen) and seen[-1] == 3
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    denoise_steps = [e["data"]["step"] for e in events if e["data"]["stage"] == "denoise"]
    assert denoise_steps == sorted(denoise_steps) and denoise_steps[-1] == 20
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))


def test_cancel_a_running_job_stops_it_within_a_step(live: httpx.Client) -> None:
    response = live.post("/v1/videos", json=LONG)
    assert response.status_code == 201, response.text
    created = response.json()
    running = wait_for(live, created["id"], lambda v: v["stage"] == "denoise" and v["step"] >= 2)
    response = live.delete(f"/v1/videos/{created['id']}")
    assert response.status_code == 200
    assert response.json()["deleted"] is False and response.json()["status"] == "in_progress"
    asked_at = time.monotonic()
    stopped = wait_for(live, created["id"], finished, timeout=30)
    assert stopped["status"] == "cancelled", stopped
    assert time.monotonic() - asked_at < 10
    assert stopped["step"] < LONG["steps"] and stopped["step"] >= running["step"]
    content = live.get(f"/v1/videos/{created['id']}/content")
    assert content.status_code == 409
    assert live.delete(f"/v1/videos/{created['id']}").json()["deleted"] is True


def test_cancel_a_queued_job_means_it_never_runs(live: httpx.Client) -> None:
    blocker = live.post("/v1/videos", json=LONG).json()
    wait_for(live, blocker["id"], lambda v: v["status"] == "in_progress")
    queued = live.post("/v1/videos", json={**LONG, "steps": 2}).json()
    assert live.get(f"/v1/videos/{queued['id']}").json()["queue_position"] == 1
    cancelled = live.delete(f"/v1/videos/{queued['id']}").json()
    assert cancelled == {
        "id": queued["id"],
        "object": "video.deleted",
        "deleted": False,
        "status": "cancelled",
    }
    live.delete(f"/v1/videos/{blocker['id']}")
    wait_for(live, blocker["id"], finished, timeout=30)
    time.sleep(1.0)  # the worker now takes the cancelled job's message, and must drop it
    after = live.get(f"/v1/videos/{queued['id']}").json()
    assert after["status"] == "cancelled" and after["started_at"] is None and after["progress"] == 0


def test_a_second_viewer_and_key_isolation_while_rendering(live: httpx.Client) -> None:
    created = live.post("/v1/videos", json={**LONG, "steps": 60}).json()
    other = httpx.Client(base_url=live.base_url, headers=auth(KEY_B))
    assert other.get(f"/v1/videos/{created['id']}/content").status_code == 404
    results: list[bytes] = []

    def watch() -> None:
        with live.stream("GET", f"/v1/videos/{created['id']}/content", timeout=120) as response:
            results.append(response.read())

    viewers = [threading.Thread(target=watch) for _ in range(2)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join(120)
    assert len(results) == 2 and results[0] == results[1]
    assert read_mp4(results[0]).shape[0] == 9
