"""The worker against a real Redis and real Celery worker processes on the tiny bundle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from hyv.engine.video_io import read_mp4
from hyv.service.celery_app import enqueue
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.settings import Settings
from hyv.service.storage import LocalStorage
from tests.service.conftest import MODEL, WEBHOOK_SECRET, Cluster, process_alive, wait_until

STAGE_ORDER = ["text_encode", "denoise", "decode", "encode"]
# A job that lasts a few seconds on the tiny model at 64x64x9 (about 5 ms per step here: ~5 s).
LONG = {"width": 64, "height": 64, "num_frames": 9, "steps": 1000}


def finished(store: JobStore, job_id: str, timeout_s: float = 60.0) -> Job:
    def check() -> Job | None:
        job = store.jobs.get(job_id)
        return job if job is not None and job.finished else None

    result: Job = wait_until(check, timeout_s)
    return result


def ended_runs(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """The job's delivery log once its last run logged its end (just after the final state)."""

    def check() -> list[dict[str, Any]] | None:
        runs = store.claims.runs(job_id)
        return runs if runs and runs[-1]["event"] == "end" else None

    result: list[dict[str, Any]] = wait_until(check, 10)
    return result


def at_step(store: JobStore, job_id: str, step: int, timeout_s: float = 60.0) -> Job:
    def check() -> Job | None:
        job = store.jobs.get(job_id)
        return job if job is not None and job.stage == "denoise" and job.step >= step else None

    result: Job = wait_until(check, timeout_s)
    return result


def test_submit_to_completed_mp4(submit: Callable[..., Job], store: JobStore, storage: LocalStorage) -> None:
    job = submit(width=48, height=32, num_frames=9, steps=3, seed=7)
    done = finished(store, job.id)

    assert done.status == JobStatus.COMPLETED, done.error_message
    assert (done.progress, done.stage, done.step, done.total_steps) == (100, "encode", 3, 3)
    assert (done.size, done.num_frames, done.fps, done.attempts) == ("48x32", 9, 8, 1)
    assert set(done.timings) == set(STAGE_ORDER) and all(v >= 0 for v in done.timings.values())
    assert done.started_at is not None and done.completed_at is not None and done.expires_at is not None
    assert done.created_at <= done.started_at <= done.completed_at < done.expires_at
    frames = read_mp4(storage.path(job.id))
    assert frames.shape == (9, 32, 48, 3)
    assert done.content_bytes == storage.path(job.id).stat().st_size > 0
    assert not storage.partial_path(job.id).exists()
    with Image.open(storage.thumbnail_path(job.id)) as thumbnail:
        assert thumbnail.size == (48, 32)
    runs = ended_runs(store, job.id)
    assert [r["outcome"] for r in runs] == ["claimed", "completed"]


def test_invalid_request_fails_cleanly(submit: Callable[..., Job], store: JobStore) -> None:
    job = submit(width=40)  # not a multiple of 16: the API checks this first, the worker too
    done = finished(store, job.id)
    assert done.status == JobStatus.FAILED
    assert done.error_code == "invalid_request" and "width" in (done.error_message or "")


def test_webhook_signed_on_completion(submit: Callable[..., Job], store: JobStore) -> None:
    from hyv.service import webhooks

    received: list[tuple[dict[str, str], str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = submit(steps=2, webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        wait_until(lambda: received, 30)
    finally:
        server.shutdown()
    headers, body = received[0]
    assert webhooks.verify(WEBHOOK_SECRET, headers, body)
    assert not webhooks.verify("another-secret", headers, body)
    event = json.loads(body)
    assert event["type"] == "video.completed" and event["data"]["id"] == job.id
    assert finished(store, job.id).status == JobStatus.COMPLETED


def test_progress_events_in_order(
    worker: Any, store: JobStore, service_settings: Settings, storage: LocalStorage
) -> None:
    job = Job(model=MODEL, request={"prompt": "a blue square", "steps": 4, "num_frames": 9}, prompt="x")
    store.jobs.create(job)

    async def collect() -> list[dict[str, Any]]:
        events = []
        async for event in store.events.stream(job.id):
            events.append(event)
            if len(events) == 1:  # subscribed and saw the snapshot: now let it run
                enqueue(job, service_settings)
        return events

    events = asyncio.run(asyncio.wait_for(collect(), 60))
    jobs = [e["job"] for e in events]
    names = [e["event"] for e in events]
    assert names[0] == "queued" and names[-1] == "completed"
    assert set(names[1:-1]) == {"progress"}
    versions = [j["version"] for j in jobs]
    assert versions == sorted(set(versions))  # strictly increasing: nothing stale, nothing twice
    progress = [j["progress"] for j in jobs]
    assert progress == sorted(progress) and progress[-1] == 100
    stages = [STAGE_ORDER.index(j["stage"]) for j in jobs if j["stage"]]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2, 3}
    steps = [j["step"] for j in jobs if j["stage"] == "denoise"]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    assert read_mp4(storage.path(job.id)).shape[0] == 9


def test_cancel_running_stops_within_one_step_and_queued_never_runs(
    submit: Callable[..., Job], store: JobStore, storage: LocalStorage, service_settings: Settings
) -> None:
    running = submit(**LONG)
    queued = submit(prompt="never runs")
    at_step(store, running.id, 3)

    # The queued one: cancelled at once, and when the worker gets its message it drops it.
    cancelled = store.cancels.request(queued.id)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    assert store.jobs.queue_position(queued.id) is None

    # The running one: the flag is set, then we read the step; at most the step in flight finishes.
    store.cancels.request(running.id)
    step_at_cancel = store.jobs.get(running.id).step  # type: ignore[union-attr]
    done = finished(store, running.id)
    assert done.status == JobStatus.CANCELLED and done.error_code == "cancelled"
    assert done.step <= step_at_cancel + 1 < LONG["steps"]
    assert not storage.path(running.id).exists() and not storage.partial_path(running.id).exists()

    # The worker is free again (busy flag cleared) and the queued job never started.
    wait_until(lambda: all(w["busy_job"] is None for w in store.workers.live(MODEL)), 10)
    wait_until(lambda: store.claims.runs(queued.id), 10)  # its message was delivered...
    never = store.jobs.get(queued.id)
    assert never is not None and never.status == JobStatus.CANCELLED
    assert never.started_at is None and never.attempts == 0  # ...and dropped
    assert [r["outcome"] for r in store.claims.runs(queued.id)] == ["finished"]


@pytest.mark.slow
def test_job_longer_than_visibility_timeout_runs_once(cluster: Callable[..., Cluster]) -> None:
    """Celery's trap: Redis redelivers an unacknowledged message after the visibility timeout even
    though its worker is alive. The second worker receives it and must drop it."""
    c = cluster(workers=2, visibility_timeout_seconds=1, unacked_restore_interval=1)
    # 128x128x17: ~10x the tokens of LONG, so several seconds even on an idle machine
    job = c.submit(**{**LONG, "width": 128, "height": 128, "num_frames": 17})
    done = finished(c.store, job.id, 180)
    assert done.status == JobStatus.COMPLETED, done.error_message
    duration = done.timings["denoise"] + done.timings["decode"]
    assert duration > 3 * c.settings.visibility_timeout_seconds  # long enough to be redelivered
    runs = ended_runs(c.store, job.id)
    outcomes = [r["outcome"] for r in runs]
    assert outcomes.count("claimed") == 1 and outcomes.count("completed") == 1
    assert "held" in outcomes  # it was redelivered while running, and dropped
    assert done.attempts == 1
    assert read_mp4(Path(c.settings.data_dir) / "videos" / f"{job.id}.mp4").shape == (17, 128, 128, 3)


def test_a_run_that_lost_its_claim_publishes_nothing_and_leaves_the_job(
    redis_server: Any, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's runtime in this process with no beat thread, so nothing renews its claim: the
    lease lapses mid-run and another worker takes the job. The run goes on to its end without
    noticing, then finds the claim gone: it drops its video and writes no final state."""
    from hyv.service.model_loading import load_pipeline
    from hyv.service.worker_process import WorkerProcess
    from tests.service.conftest import make_settings

    url = redis_server.url.rsplit("/", 1)[0] + "/15"  # a private db (no worker, no reaper on it)
    settings = make_settings(url, tmp_path / "data", tiny_bundle, job_lease_seconds=0.5)
    runtime = WorkerProcess(settings)  # not load(): no beat, no cancel listener
    store, storage = JobStore.connect(runtime.jobs.redis), LocalStorage(settings.data_dir)
    store.redis.flushdb()
    runtime.pipeline = load_pipeline(settings)
    job = Job(model=MODEL, request={"prompt": "x", **LONG, "steps": 300}, prompt="x")
    store.jobs.create(job)
    outcome: list[str] = []
    run = threading.Thread(target=lambda: outcome.append(runtime.run(job.id)))
    run.start()
    try:
        at_step(store, job.id, 2)
        wait_until(lambda: store.claims.holder(job.id) is None, 10)  # the lease lapsed
        assert store.claims.claim(job.id, "another-worker:1", 60) == "claimed"
        run.join(120)
        assert outcome == ["lost"]
        left = store.jobs.get(job.id)
        assert left is not None and left.status == JobStatus.IN_PROGRESS and left.completed_at is None
        assert left.attempts == 1 and left.error_code is None
        assert store.claims.holder(job.id) == "another-worker:1"  # its claim was not released either
        assert not storage.path(job.id).exists() and not storage.thumbnail_path(job.id).exists()
        assert [(r["event"], r["outcome"]) for r in store.claims.runs(job.id)] == [
            ("delivery", "claimed"),
            ("end", "lost"),
        ]
        assert "lost the claim before publishing its video" in caplog.text
    finally:
        run.join(120)
        runtime.stop()
        store.redis.flushdb()


def test_every_writer_gives_a_finished_job_the_same_record_ttl(
    submit: Callable[..., Job], store: JobStore, service_settings: Settings
) -> None:
    """Completed by the worker, cancelled by the API, failed at the hard time limit (by Celery's main
    process): each final write sets the record's TTL from the settings, the same for all three."""
    from fastapi.testclient import TestClient

    from hyv.service.api.app import create_app
    from hyv.service.job_records import record_ttl_seconds
    from hyv.service.job_runner import fail_past_hard_limit

    completed = submit(width=32, height=32, num_frames=5, steps=2)
    assert finished(store, completed.id).status == JobStatus.COMPLETED

    cancelled = store.jobs.create(Job(model=MODEL, request={"prompt": "x"}, prompt="x"))  # not enqueued
    with TestClient(create_app(service_settings)) as client:
        answer = client.delete(f"/v1/videos/{cancelled.id}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text

    timed_out = _running_as(store, "worker-a:7:task-1")  # its pool process was killed by the limit
    fail_past_hard_limit(service_settings, timed_out.id, "task-1")

    statuses = [store.jobs.get(job.id).status for job in (completed, cancelled, timed_out)]  # type: ignore[union-attr]
    assert statuses == [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED]
    expected = record_ttl_seconds(service_settings)
    ttls = [store.redis.ttl(store.keys.job(job.id)) for job in (completed, cancelled, timed_out)]
    assert all(expected - 60 <= ttl <= expected for ttl in ttls), (ttls, expected)


def _running_as(store: JobStore, token: str) -> Job:
    """A job in progress whose claim `token` holds (not enqueued: no worker runs it)."""
    job = store.jobs.create(Job(model=MODEL, request={"prompt": "x"}, prompt="x"))
    assert store.claims.claim(job.id, token, 60) == "claimed"
    written, running = store.jobs.transition(
        job.id, [JobStatus.QUEUED], claim_token=token, status=JobStatus.IN_PROGRESS, worker="worker-a:7"
    )
    assert written and running is not None
    return running


def test_the_hard_limit_fails_only_the_run_it_killed(store: JobStore, service_settings: Settings) -> None:
    """Celery's main process fails a job whose pool process the hard time limit killed only while
    the claim is still that run's: a job another run holds (it was requeued and taken since) or one
    back in the queue is left alone."""
    from hyv.service.job_runner import fail_past_hard_limit

    taken = _running_as(store, "worker-b:9:task-2")  # the killed run was task-1: another run holds it
    fail_past_hard_limit(service_settings, taken.id, "task-1")
    after = store.jobs.get(taken.id)
    assert after is not None and after.status == JobStatus.IN_PROGRESS and after.error_code is None
    assert store.claims.holder(taken.id) == "worker-b:9:task-2"

    requeued = store.jobs.create(Job(model=MODEL, request={"prompt": "x"}, prompt="x"))  # queued, unclaimed
    fail_past_hard_limit(service_settings, requeued.id, "task-1")
    assert store.jobs.get(requeued.id).status == JobStatus.QUEUED  # type: ignore[union-attr]

    killed = _running_as(store, "worker-a:7:task-1")
    fail_past_hard_limit(service_settings, killed.id, "task-1")
    failed = store.jobs.get(killed.id)
    assert failed is not None and failed.status == JobStatus.FAILED and failed.error_code == "timeout"
    assert store.claims.holder(killed.id) is None  # the dead run's claim went with the write


def test_a_stale_run_cannot_write_progress(store: JobStore) -> None:
    """Every progress write carries the run's claim token: refused once another run holds the job,
    or once the job is not in progress."""
    job = _running_as(store, "worker-a:7:task-1")
    assert store.jobs.update_progress(job.id, "worker-a:7:task-1", step=3, stage="denoise") == (True, False)
    store.claims.drop(job.id)
    assert store.claims.claim(job.id, "worker-b:9:task-2", 60) == "claimed"
    assert store.jobs.update_progress(job.id, "worker-a:7:task-1", step=9) == (False, False)
    assert store.jobs.get(job.id).step == 3  # type: ignore[union-attr]
    store.cancels.request(job.id)
    assert store.jobs.update_progress(job.id, "worker-b:9:task-2", step=4) == (
        True,
        True,
    )  # the flag comes back
    store.jobs.finish(job.id, "worker-b:9:task-2", JobStatus.COMPLETED)
    assert store.jobs.update_progress(job.id, "worker-b:9:task-2", step=5)[0] is False  # finished


def _main_pid_of(c: Cluster, child_pid: int) -> int:
    stat = Path(f"/proc/{child_pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # ppid: the Celery main process of the pool child


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["pool_process", "whole_worker"])
def test_worker_killed_mid_job_is_redelivered_and_completed(
    cluster: Callable[..., Cluster], victim: str
) -> None:
    c = cluster(workers=2)
    job = c.submit(**{**LONG, "steps": 600})
    first = at_step(c.store, job.id, 5)
    assert first.worker is not None
    child_pid = int(first.worker.rsplit(":", 1)[1])
    main_pid = _main_pid_of(c, child_pid)
    assert main_pid in [p.pid for p in c.workers]
    if victim == "pool_process":
        os.kill(child_pid, signal.SIGKILL)  # like the OOM killer: Celery's main process notices
    else:
        os.killpg(main_pid, signal.SIGKILL)  # the whole worker vanishes: only the claim lease tells
    killed_at = time.time()
    wait_until(lambda: not process_alive(child_pid), 10)

    done = finished(c.store, job.id, 120)
    assert done.status == JobStatus.COMPLETED, done.error_message
    assert done.attempts == 2 and done.worker != first.worker
    runs = ended_runs(c.store, job.id)
    starts = [r for r in runs if r["outcome"] == "claimed"]
    assert len(starts) == 2
    assert starts[1]["t"] > killed_at  # the second run began after the first worker was gone
    assert [r["outcome"] for r in runs if r["event"] == "end"] == ["completed"]
    frames = read_mp4(Path(c.settings.data_dir) / "videos" / f"{job.id}.mp4")
    assert frames.shape == (9, 64, 64, 3)
