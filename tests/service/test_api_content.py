"""Content (Range, ETag, the growing MP4), thumbnails and SSE, with the test playing the worker's
part through the real storage and job store (the same calls hyv.service.job_runner makes), so the timing
of every write is under the test's control. The end-to-end versions with a real Celery worker are
in test_api_e2e.py."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from hyv.engine.video_io import FragmentedMP4Encoder, read_mp4
from tests.service.conftest import wait_until
from tests.service.conftest_api import KEY_A, auth

pytestmark = pytest.mark.timeout(120)


class FakeWorkerSide:
    """Writes what a worker writes: status/progress in the JobStore, MP4 bytes in storage."""

    def __init__(self, settings: Any) -> None:
        from hyv.service.job_store import JobStore
        from hyv.service.storage import LocalStorage

        self.store = JobStore.from_url(settings.redis_url)
        self.storage = LocalStorage(settings.data_dir)

    def start(self, job_id: str) -> Any:
        from hyv.service.job_model import JobStatus

        self.store.jobs.update(
            job_id, status=JobStatus.IN_PROGRESS, started_at=int(time.time()), stage="denoise"
        )
        return self.storage.open_writer(job_id)

    def complete(self, job_id: str, writer: Any) -> None:
        from hyv.service.job_model import JobStatus

        writer.close()
        self.store.jobs.update(
            job_id,
            status=JobStatus.COMPLETED,
            progress=100,
            completed_at=int(time.time()),
            content_bytes=writer.bytes_written,
        )


def mp4_pieces(frames: int = 9, size: int = 32, fps: int = 8) -> list[bytes]:
    """A fragmented MP4 as the pipeline streams it: init segment, fragments, tail."""
    rng = np.random.default_rng(0)
    pieces = []
    with FragmentedMP4Encoder(size, size, fps, gop=2) as encoder:
        pieces.append(encoder.pending())
        for _ in range(frames):
            data = encoder.push(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            if data:
                pieces.append(data)
        pieces.append(encoder.finish())
    return [p for p in pieces if p]


@pytest.fixture
def env(make_api_settings: Any, serve_app: Any) -> Iterator[tuple[httpx.Client, FakeWorkerSide]]:
    settings = make_api_settings()
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client, FakeWorkerSide(settings)


def submit(client: httpx.Client) -> str:
    response = client.post("/v1/videos", json={"prompt": "a red circle", "size": "32x32", "num_frames": 9})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_completed_video_has_length_etag_and_ranges(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    client, worker = env
    job_id = submit(client)
    writer = worker.start(job_id)
    mp4 = b"".join(mp4_pieces())
    writer.write(mp4)
    worker.complete(job_id, writer)

    url = f"/v1/videos/{job_id}/content"
    full = client.get(url)
    assert full.status_code == 200
    assert full.content == mp4
    assert full.headers["content-type"] == "video/mp4"
    assert int(full.headers["content-length"]) == len(mp4)
    assert full.headers["accept-ranges"] == "bytes"
    etag = full.headers["etag"]
    assert etag.startswith('"') and job_id in etag
    assert read_mp4(full.content).shape == (9, 32, 32, 3)

    part = client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 0-99/{len(mp4)}"
    assert part.content == mp4[:100]
    tail = client.get(url, headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == mp4[-64:]
    middle = client.get(url, headers={"Range": f"bytes=100-{len(mp4) + 500}"})
    assert middle.status_code == 206 and middle.content == mp4[100:]
    beyond = client.get(url, headers={"Range": f"bytes={len(mp4) + 10}-"})
    assert beyond.status_code == 416
    for reversed_range in ("bytes=30-10", "bytes = 9-8", "bytes=0-9, 30-10"):
        invalid = client.get(url, headers={"Range": reversed_range})  # as while rendering: 416
        assert invalid.status_code == 416, reversed_range
        assert invalid.headers["content-range"] == f"bytes */{len(mp4)}"
    for unreadable in ("items=0-9", "nonsense", "bytes=", "bytes=-", "bytes=abc"):
        ignored = client.get(url, headers={"Range": unreadable})  # ignored (RFC 9110): the whole file
        assert ignored.status_code == 200 and ignored.content == mp4, unreadable

    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    if_range = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert if_range.status_code == 206 and len(if_range.content) == 10
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == mp4


def test_stream_of_a_rendering_video_follows_the_growing_file(
    env: tuple[httpx.Client, FakeWorkerSide],
) -> None:
    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    received: list[tuple[float, bytes]] = []
    first_byte = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:  # starts while the job is still queued
        try:
            with client.stream("GET", f"/v1/videos/{job_id}/content") as response:
                assert response.status_code == 200
                assert response.headers["x-video-status"] == "queued"
                assert "content-length" not in response.headers
                for chunk in response.iter_bytes():
                    received.append((time.monotonic(), chunk))
                    first_byte.set()
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    writer = worker.start(job_id)
    writer.write(pieces[0])  # the init segment, before any frame
    assert first_byte.wait(5), "the init segment did not reach the client while the job was running"
    for piece in pieces[1:]:
        time.sleep(0.05)
        writer.write(piece)
    completed_at = time.monotonic()
    worker.complete(job_id, writer)
    watcher.join(10)
    assert not errors, errors
    data = b"".join(chunk for _, chunk in received)
    assert data == b"".join(pieces) == worker.storage.path(job_id).read_bytes()
    assert received[0][0] < completed_at  # bytes flowed before the job finished
    assert read_mp4(data).shape == (9, 32, 32, 3)


def test_stream_is_cut_when_the_job_fails(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    from hyv.service.job_model import JobStatus

    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    writer = worker.start(job_id)
    writer.write(pieces[0])
    outcome: list[Any] = []

    def watch() -> None:
        try:
            with client.stream("GET", f"/v1/videos/{job_id}/content") as response:
                outcome.append(b"".join(response.iter_bytes()))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    writer.abort()
    worker.store.jobs.update(
        job_id, status=JobStatus.FAILED, error_code="internal_error", error_message="boom"
    )
    watcher.join(10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError), outcome  # not a silently short file
    failed = client.get(f"/v1/videos/{job_id}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "internal_error", "message": "boom"}


class Download:
    """A GET of the content in a background thread: status, headers, the bytes as they arrive."""

    def __init__(self, client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> None:
        self.response: httpx.Response | None = None
        self.chunks: list[tuple[float, bytes]] = []
        self.error: BaseException | None = None
        self.answered = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, job_id, headers or {}))
        self._thread.start()

    def _run(self, client: httpx.Client, job_id: str, headers: dict[str, str]) -> None:
        try:
            with client.stream("GET", f"/v1/videos/{job_id}/content", headers=headers) as response:
                self.response = response
                self.answered.set()
                for chunk in response.iter_bytes():
                    self.chunks.append((time.monotonic(), chunk))
        except BaseException as exc:
            self.error = exc
        finally:
            self.answered.set()

    def join(self) -> bytes:
        self._thread.join(20)
        assert not self._thread.is_alive(), "the download did not end"
        return b"".join(chunk for _, chunk in self.chunks)


def test_range_while_rendering_follows_the_file_from_the_offset(
    env: tuple[httpx.Client, FakeWorkerSide],
) -> None:
    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    mp4 = b"".join(pieces)
    writer = worker.start(job_id)
    writer.write(b"".join(pieces[:2]))
    start = len(pieces[0]) + 7  # written already: answered at once
    resumed = Download(client, job_id, {"Range": f"bytes={start}-"})
    assert resumed.answered.wait(5)
    later = len(mp4) - len(pieces[-1]) - 3  # not written yet: answered once it is
    waiting = Download(client, job_id, {"Range": f"bytes={later}-"})
    time.sleep(0.3)
    assert not waiting.answered.is_set()
    for piece in pieces[2:-1]:
        writer.write(piece)
        time.sleep(0.05)
    assert waiting.answered.wait(5)
    written_at = time.monotonic()
    time.sleep(0.3)
    writer.write(pieces[-1])
    worker.complete(job_id, writer)

    for download, offset in ((resumed, start), (waiting, later)):
        data = download.join()
        assert download.error is None, download.error
        response = download.response
        assert response is not None and response.status_code == 206
        assert response.headers["content-range"] == f"bytes {offset}-*/*"
        assert response.headers["x-video-status"] == "in_progress"
        assert "content-length" not in response.headers
        assert data == mp4[offset:] and mp4 == worker.storage.path(job_id).read_bytes()
    assert resumed.chunks[0][0] < written_at  # it streamed while the job rendered
    assert read_mp4(mp4[:start] + resumed.join()).shape == (9, 32, 32, 3)


def test_bounded_and_invalid_ranges_while_rendering(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    mp4 = b"".join(pieces)
    writer = worker.start(job_id)
    writer.write(pieces[0])
    url = f"/v1/videos/{job_id}/content"

    span = client.get(url, headers={"Range": "bytes=10-29"})  # written: exactly that span
    assert span.status_code == 206 and span.content == mp4[10:30]
    assert span.headers["content-range"] == "bytes 10-29/*" and span.headers["content-length"] == "20"
    for bad in ("bytes=30-10", "bytes = 9-8"):
        invalid = client.get(url, headers={"Range": bad})
        assert invalid.status_code == 416  # the length is not known yet: no Content-Range
        assert "content-range" not in invalid.headers
        assert invalid.json()["error"]["code"] == "range_not_satisfiable"
        assert invalid.json()["error"]["param"] == "Range"

    # Beyond what is written: each waits; the job completes before bytes 1000000 and len(mp4):
    # what exists is served from the finished file, a start past its end is 416.
    late_span = Download(client, job_id, {"Range": f"bytes={len(pieces[0])}-{len(pieces[0]) + 99}"})
    past_end = Download(client, job_id, {"Range": "bytes=100-999999"})
    beyond = Download(client, job_id, {"Range": f"bytes={len(mp4)}-"})
    time.sleep(0.3)
    assert not any(d.answered.is_set() for d in (late_span, past_end, beyond))
    writer.write(b"".join(pieces[1:]))  # the late span exists now, the job still renders
    assert late_span.join() == mp4[len(pieces[0]) : len(pieces[0]) + 100]
    assert late_span.response is not None and late_span.response.status_code == 206
    assert not past_end.answered.is_set()
    worker.complete(job_id, writer)
    assert past_end.join() == mp4[100:]
    assert past_end.response is not None and past_end.response.status_code == 206
    assert past_end.response.headers["content-range"] == f"bytes 100-{len(mp4) - 1}/{len(mp4)}"
    beyond.join()
    assert beyond.response is not None and beyond.response.status_code == 416


def test_whole_stream_answers_while_rendering(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    """Ranges that are the whole file or cannot be cut yet: the whole live stream, 200."""
    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    writer = worker.start(job_id)
    writer.write(pieces[0])
    downloads = [
        Download(client, job_id, {"Range": value})
        for value in ("bytes=0-", "bytes=-100", "bytes=0-9,20-29", "items=0-9", "nonsense")
    ]
    downloads.append(Download(client, job_id, {"Range": "bytes=5-", "If-Range": '"an-etag"'}))
    for download in downloads:
        assert download.answered.wait(5)
    writer.write(b"".join(pieces[1:]))
    worker.complete(job_id, writer)
    for download in downloads:
        assert download.join() == b"".join(pieces)
        assert download.response is not None and download.response.status_code == 200


def test_stream_is_cut_when_a_rerun_replaces_the_file(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    """The job restarted on another worker (its first was presumed dead): the stream of the first
    run's file is cut, not ended as if complete; a Range resume gets the rest of the final file."""
    client, worker = env
    job_id = submit(client)
    pieces = mp4_pieces()
    first = worker.start(job_id)
    first.write(b"".join(pieces[:2]))
    stream = Download(client, job_id)
    wait_until(lambda: sum(len(c) for _, c in stream.chunks) == len(pieces[0]) + len(pieces[1]))
    rerun = worker.storage.open_writer(job_id)  # a new file over `.part`: the first is abandoned
    first.abandon()
    have = stream.join()
    assert isinstance(stream.error, httpx.RemoteProtocolError), stream.error
    rerun.write(b"".join(pieces))
    worker.complete(job_id, rerun)
    rest = client.get(f"/v1/videos/{job_id}/content", headers={"Range": f"bytes={len(have)}-"})
    assert rest.status_code == 206
    assert have + rest.content == b"".join(pieces) == worker.storage.path(job_id).read_bytes()


def test_thumbnail_variant(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    client, worker = env
    job_id = submit(client)
    writer = worker.start(job_id)
    writer.write(b"".join(mp4_pieces()))
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, format="PNG")
    worker.storage.save_thumbnail(job_id, buffer.getvalue())
    worker.complete(job_id, writer)
    response = client.get(f"/v1/videos/{job_id}/content", params={"variant": "thumbnail"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).getpixel((5, 5)) == (10, 200, 10)


def read_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse an SSE stream into {"id", "event", "data"} dicts (comments skipped)."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value


def test_events_stream_progress_in_order_then_the_final_state(
    env: tuple[httpx.Client, FakeWorkerSide],
) -> None:
    from hyv.service.job_model import JobStatus

    client, worker = env
    job_id = submit(client)
    events: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def watch() -> None:
        with client.stream("GET", f"/v1/videos/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in read_events(response):
                events.append(event)
                subscribed.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert subscribed.wait(5)
    worker.store.jobs.update(job_id, status=JobStatus.IN_PROGRESS, stage="text_encode", progress=1)
    for step in range(1, 5):
        worker.store.jobs.update(job_id, stage="denoise", step=step, total_steps=4, progress=step * 20)
    worker.store.jobs.update(job_id, status=JobStatus.COMPLETED, progress=100, completed_at=int(time.time()))
    watcher.join(10)
    assert not watcher.is_alive(), "the event stream did not end after the final state"

    assert events[0]["event"] == "video.progress" and events[0]["data"]["status"] == "queued"
    assert events[0]["data"]["queue_position"] == 1
    assert events[-1]["event"] == "video.completed" and events[-1]["data"]["progress"] == 100
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress)
    steps = [e["data"]["step"] for e in events[:-1] if e["data"]["stage"] == "denoise"]
    assert steps == [1, 2, 3, 4]  # every stored change, none lost or reordered
    assert all(e["data"]["object"] == "video" and "owner" not in e["data"] for e in events)


def test_events_of_a_finished_job_is_one_final_event(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    client, _ = env
    job_id = submit(client)
    client.delete(f"/v1/videos/{job_id}")  # cancelled while queued
    with client.stream("GET", f"/v1/videos/{job_id}/events") as response:
        events = list(read_events(response))
    assert [e["event"] for e in events] == ["video.cancelled"]
    assert events[0]["data"]["status"] == "cancelled"
