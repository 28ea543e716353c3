"""requeue_job (a dead run's job back to the queue) against a real Redis: the message goes out before
the record says queued, so a requeue cut short never leaves a queued job without a message (the
queue reaper would not see it missing while the dead run's delivery sits in the unacked index)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from hyv.service.job_model import Job, JobStatus
from hyv.service.job_runner import REQUEUE_LOCK_MS, requeue_job, requeue_own_job
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.queue_reaper import job_id_of
from hyv.service.settings import Settings, queue_name

MODEL = "requeue-model"


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    """A database of its own: the session's workers (other tests') run beats on database 0, and a
    beat would requeue this module's unclaimed in-progress jobs itself."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/14")
    client.flushdb()
    return JobStore.connect(client)


def in_progress(store: JobStore) -> Job:
    """A job a run had started, whose run is gone (no claim)."""
    job = store.jobs.create(Job(model=MODEL, prompt="p"))
    written, started = store.jobs.transition(job.id, [JobStatus.QUEUED], status=JobStatus.IN_PROGRESS)
    assert written and started is not None
    return started


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=url, data_dir=tmp_path, model_name=MODEL)


def broker_url(store: JobStore) -> str:
    """The store's own database as the broker (its messages land where the test reads them)."""
    kwargs = store.redis.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"


def test_requeue_sends_a_message_and_marks_the_job_queued(store: JobStore, tmp_path: Path) -> None:
    job = in_progress(store)
    assert requeue_job(store.jobs, settings_for(broker_url(store), tmp_path), job.id)
    after = store.jobs.get(job.id)
    assert after is not None and after.status == JobStatus.QUEUED and after.progress == 0
    messages = store.redis.lrange(queue_name(MODEL), 0, -1)
    assert [job_id_of(m) for m in messages] == [job.id]


def test_a_claimed_or_finished_job_is_not_requeued(store: JobStore, tmp_path: Path) -> None:
    settings = settings_for(broker_url(store), tmp_path)
    claimed = in_progress(store)
    store.claims.claim(claimed.id, "w:1:t", 60)
    queued = store.jobs.create(Job(model=MODEL, prompt="p"))
    assert not requeue_job(store.jobs, settings, claimed.id)
    assert not requeue_job(store.jobs, settings, queued.id)
    after = store.jobs.get(claimed.id)
    assert after is not None and after.status == JobStatus.IN_PROGRESS
    assert store.redis.llen(queue_name(MODEL)) == 0  # no message sent for either


def test_one_process_at_a_time_requeues_a_job(store: JobStore, tmp_path: Path) -> None:
    """The run handing its job back and a beat that saw it unclaimed: one message, not two."""
    settings = settings_for(broker_url(store), tmp_path)
    job = in_progress(store)
    store.redis.set(store.keys.requeue(job.id), "1", px=REQUEUE_LOCK_MS)  # another process's
    assert not requeue_job(store.jobs, settings, job.id)
    assert store.redis.llen(queue_name(MODEL)) == 0
    store.redis.delete(store.keys.requeue(job.id))
    assert requeue_job(store.jobs, settings, job.id)
    assert store.redis.llen(queue_name(MODEL)) == 1 and not store.redis.exists(store.keys.requeue(job.id))


def test_a_run_giving_its_job_back_waits_for_a_beats_requeue_in_flight(
    store: JobStore, tmp_path: Path
) -> None:
    """The run released its claim and a beat took the requeue lock first: the run waits for the
    beat's requeue to land and counts the job requeued (not lost) without sending a second message."""
    settings = settings_for(broker_url(store), tmp_path)
    job = in_progress(store)
    lock = store.keys.requeue(job.id)
    store.redis.set(lock, "1", px=REQUEUE_LOCK_MS)  # the beat's, mid-requeue

    def beat_finishes() -> None:
        time.sleep(0.4)
        written, _ = store.jobs.transition(job.id, [JobStatus.IN_PROGRESS], status=JobStatus.QUEUED)
        assert written
        store.redis.delete(lock)

    beat = threading.Thread(target=beat_finishes)
    started = time.monotonic()
    beat.start()
    try:
        assert requeue_own_job(store.jobs, settings, job.id)
    finally:
        beat.join()
    assert 0.3 < time.monotonic() - started < 3
    assert store.redis.llen(queue_name(MODEL)) == 0  # the beat's message is the one; none from the run


def test_a_run_giving_its_job_back_takes_over_when_the_beats_requeue_failed(
    store: JobStore, tmp_path: Path
) -> None:
    """The beat let go of the lock without requeueing (its broker call failed): the run requeues."""
    settings = settings_for(broker_url(store), tmp_path)
    job = in_progress(store)
    lock = store.keys.requeue(job.id)
    store.redis.set(lock, "1", px=300)  # expires: the holder gave up
    assert requeue_own_job(store.jobs, settings, job.id)
    after = store.jobs.get(job.id)
    assert after is not None and after.status == JobStatus.QUEUED
    assert store.redis.llen(queue_name(MODEL)) == 1


def test_a_run_giving_its_job_back_gives_up_on_a_job_someone_else_holds(
    store: JobStore, tmp_path: Path
) -> None:
    """Claimed by another run (not locked, not queued): not requeued, at once."""
    settings = settings_for(broker_url(store), tmp_path)
    job = in_progress(store)
    store.claims.claim(job.id, "w:1:t", 60)
    started = time.monotonic()
    assert not requeue_own_job(store.jobs, settings, job.id)
    assert time.monotonic() - started < 1
    assert store.redis.llen(queue_name(MODEL)) == 0


def test_a_requeue_that_cannot_send_leaves_the_job_in_progress(store: JobStore, tmp_path: Path) -> None:
    """The broker unreachable (as for a process killed mid-requeue): the job is not marked queued
    without a message; it stays in progress and unclaimed, so the next beat requeues it."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    job = in_progress(store)
    settings = settings_for(f"redis://127.0.0.1:{dead_port}/0", tmp_path)
    with pytest.raises(OperationalError):
        requeue_job(store.jobs, settings, job.id)
    after = store.jobs.get(job.id)
    assert after is not None and after.status == JobStatus.IN_PROGRESS
