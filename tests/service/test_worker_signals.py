"""The worker's per-step signals (hyv.service.running_job) against a real Redis: progress writes
throttled to `progress_interval_s` with every stage boundary kept, cancels delivered by pub/sub into
a local event (and the flag fallbacks); then both in real Celery workers on the tiny bundle."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from hyv.service.celery_app import enqueue
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.running_job import CancelWatch, ProgressWriter, RunningJob
from tests.service.conftest import MODEL, Cluster, wait_until
from tests.service.test_worker import LONG, STAGE_ORDER, at_step, ended_runs, finished

WATCH_CLIENT = "hyv-test-cancel-watch"  # the name of the watch's connections (to drop them)


@pytest.fixture
def fresh_url(redis_server: RedisServer) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def fresh(fresh_url: str) -> JobStore:
    return JobStore.connect(redis.Redis.from_url(fresh_url))


def running_job(store: JobStore, worker: str | None = None, token: str = "token") -> Job:
    """A job in progress whose claim `token` holds (progress writes carry the run's token)."""
    job = store.jobs.create(Job(model="m", prompt="p"))
    assert store.claims.claim(job.id, token, 60) == "claimed"
    updated = store.jobs.update(job.id, status=JobStatus.IN_PROGRESS, worker=worker)
    assert updated is not None
    return updated


def drain(pubsub: Any) -> list[dict[str, Any]]:
    """The job states published so far (every write publishes one)."""
    jobs = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            jobs.append(json.loads(message["data"])["job"])
    return jobs


# --- ProgressWriter ------------------------------------------------------------------------------


def test_progress_writes_are_throttled_but_stage_boundaries_always_written(fresh: JobStore) -> None:
    job = running_job(fresh)
    pubsub = fresh.redis.pubsub()
    pubsub.subscribe(fresh.events.channel(job.id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # before the first write
    now = [100.0]
    running = RunningJob(job.id, "token")
    writer = ProgressWriter(fresh.jobs, running, 0.1, clock=lambda: now[0])

    steps = 300
    writer.report("text_encode", 1, 1, 0.02)
    for step in range(1, steps + 1):  # 13 ms steps: the tiny model's pace
        now[0] += 0.013
        writer.report("denoise", step, steps, 0.02 + 0.88 * step / steps)
    for frames in (3, 6, 9):
        now[0] += 0.001
        writer.report("decode", frames, 9, 0.9 + 0.08 * frames / 9)
        writer.note(content_bytes=frames * 1000)
    writer.report("encode", 1, 1, 1.0)
    writer.note(content_bytes=10_000)

    written = drain(pubsub)
    assert len(written) == running.progress_writes < steps / 5
    denoise = [j["step"] for j in written if j["stage"] == "denoise"]
    # The stage's first step, then one every 0.1 s (8 steps of 13 ms), and always the last one.
    assert denoise == [1, *range(9, steps, 8), steps]
    assert [j["stage"] for j in written[:2]] == ["text_encode", "denoise"]
    decode = [j for j in written if j["stage"] == "decode"]
    assert decode[0]["progress"] < decode[-1]["progress"] and decode[-1]["content_bytes"] == 6000
    assert written[-1]["stage"] == "encode" and written[-1]["progress"] == 99
    assert written[-1]["content_bytes"] == 9000
    assert writer.unwritten() == {"content_bytes": 10_000}  # what the final write adds
    progress = [j["progress"] for j in written]
    assert progress == sorted(progress)

    with pytest.raises(ValueError, match="interval_s"):
        ProgressWriter(fresh.jobs, running, -1)


def test_progress_write_carries_the_cancel_flag_back(fresh: JobStore) -> None:
    job = running_job(fresh)  # no worker recorded: request_cancel publishes nothing
    running = RunningJob(job.id, "token")
    writer = ProgressWriter(fresh.jobs, running, 0.0)
    writer.report("denoise", 1, 10, 0.1)
    assert not running.stop_requested()
    fresh.cancels.request(job.id)
    writer.report("denoise", 2, 10, 0.2)
    assert running.stop_requested() and (running.cancel_via, running.cancel_step) == ("flag", 2)
    assert running.summary()["cancel_via"] == "flag"


# --- CancelWatch ---------------------------------------------------------------------------------


def test_cancel_watch_delivers_by_message_and_falls_back_to_the_flag(fresh: JobStore, fresh_url: str) -> None:
    current: list[RunningJob | None] = [None]
    watched = JobStore.connect(redis.Redis.from_url(fresh_url, client_name=WATCH_CLIENT))
    watch = CancelWatch(watched.cancels, "box:1", lambda: current[0])
    assert watch.start(5.0)
    try:
        # A message: the running job's event is set, with the step it was at.
        job = running_job(fresh, worker="box:1")
        running = current[0] = RunningJob(job.id, "t", step=17, stage="denoise")
        fresh.cancels.request(job.id)
        assert running.cancel.wait(5.0)
        assert (running.cancel_via, running.cancel_step) == ("pubsub", 17)

        # Another worker's job, or one not running here, touches nothing.
        elsewhere = running_job(fresh, worker="box:2")
        idle = current[0] = RunningJob(running_job(fresh, worker="box:1").id, "t")
        fresh.cancels.request(elsewhere.id)
        fresh.redis.publish(fresh.cancels.channel("box:1"), elsewhere.id)
        time.sleep(0.3)
        assert not idle.stop_requested()

        # Cancelled before this worker registered the job: the message found nothing to stop, the
        # flag read at the job's start does.
        current[0] = None
        early = running_job(fresh, worker="box:1")
        fresh.cancels.request(early.id)
        time.sleep(0.3)
        late = current[0] = RunningJob(early.id, "t")
        assert not late.stop_requested()
        watch.check_flag(late)
        assert late.cancel_via == "flag"

        # The subscription is lost (Redis dropped the connection): once subscribed again, the
        # running job's flag is read, since a message may have been missed meanwhile.
        missed = running_job(fresh, worker="box:1")
        again = current[0] = RunningJob(missed.id, "t")
        fresh.redis.set(f"hyv:cancel:{missed.id}", b"1")  # a cancel whose message never came
        ours = [c["id"] for c in fresh.redis.client_list(_type="pubsub") if c["name"] == WATCH_CLIENT]
        assert len(ours) == 1
        fresh.redis.client_kill_filter(_id=ours[0])
        assert again.cancel.wait(10.0) and again.cancel_via == "flag"
        wait_until(lambda: watch.subscribed, 10)
    finally:
        watch.stop()


# --- in real workers -----------------------------------------------------------------------------


def test_worker_throttles_progress_of_a_job_with_many_fast_steps(cluster: Callable[..., Cluster]) -> None:
    c = cluster(workers=1, progress_interval_s=0.1)
    steps = 400
    job = Job(model=MODEL, request={"prompt": "a blue square", "steps": steps, "num_frames": 5}, prompt="x")
    c.store.jobs.create(job)

    async def collect() -> list[dict[str, Any]]:
        events = []
        async for event in c.store.events.stream(job.id):
            events.append(event)
            if len(events) == 1:  # subscribed and saw the snapshot: now let it run
                enqueue(job, c.settings)
        return events

    events = asyncio.run(asyncio.wait_for(collect(), 120))
    jobs = [e["job"] for e in events]
    done = jobs[-1]
    assert events[-1]["event"] == "completed" and done["progress"] == 100
    denoise = [j["step"] for j in jobs if j["stage"] == "denoise" and j["status"] == "in_progress"]
    # Far fewer writes than steps, at most about one per 0.1 s, yet the first and last step are there.
    assert denoise[0] == 1 and denoise[-1] == steps and denoise == sorted(denoise)
    assert len(denoise) <= done["timings"]["denoise"] / 0.1 + 3 and len(denoise) < steps / 4
    stages = [STAGE_ORDER.index(j["stage"]) for j in jobs if j["stage"]]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2, 3}
    assert max(j["progress"] for j in jobs[:-1]) == 99  # the encode stage's end, before completion
    end = ended_runs(c.store, job.id)[-1]
    assert end["outcome"] == "completed" and end["progress_writes"] == len(jobs) - 3  # - queued, start, final


def test_running_job_stops_within_one_step_of_a_cancel_message(cluster: Callable[..., Cluster]) -> None:
    """A progress interval of a minute: no progress write (so no flag read) happens during the
    denoising loop after its first step, so only the pub/sub message can stop the job."""
    c = cluster(workers=1, progress_interval_s=60.0)
    job = c.submit(**LONG)
    at_step(c.store, job.id, 1)
    time.sleep(0.5)  # some steps on: none of them written
    assert c.store.jobs.get(job.id).step == 1  # type: ignore[union-attr]
    asked = time.monotonic()
    c.store.cancels.request(job.id)
    done = finished(c.store, job.id, 60)
    assert time.monotonic() - asked < 5.0
    assert done.status == JobStatus.CANCELLED and done.error_code == "cancelled"
    end = ended_runs(c.store, job.id)[-1]
    assert end["outcome"] == "cancelled" and end["cancel_via"] == "pubsub"
    # It stopped after the step in flight when the message came, and the record says where.
    assert end["cancel_step"] <= end["step"] <= end["cancel_step"] + 1
    assert done.step == end["step"] and 1 < done.step < LONG["steps"]
    assert end["progress_writes"] <= 3  # the MP4's first bytes, text_encode, the first step
