"""requeue_job (a dead run's job back to the queue) against a real Redis: the message goes out before
the record says queued, so a requeue cut short never leaves a queued job without a message (the
queue reaper would not see it missing while the dead run's delivery sits in the unacked index)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from hyv.service.job_model import Job, JobStatus
from hyv.service.job_runner import requeue_job
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.queue_reaper import job_id_of
from hyv.service.settings import Settings, queue_name

MODEL = "requeue-model"


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    client = redis.Redis.from_url(redis_server.url)
    client.delete(queue_name(MODEL))
    return JobStore.connect(client)


def in_progress(store: JobStore) -> Job:
    """A job a run had started, whose run is gone (no claim)."""
    job = store.jobs.create(Job(model=MODEL, prompt="p"))
    written, started = store.jobs.transition(job.id, [JobStatus.QUEUED], status=JobStatus.IN_PROGRESS)
    assert written and started is not None
    return started


def settings_for(url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=url, data_dir=tmp_path, model_name=MODEL)


def test_requeue_sends_a_message_and_marks_the_job_queued(
    store: JobStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    job = in_progress(store)
    assert requeue_job(store.jobs, settings_for(redis_server.url, tmp_path), job.id)
    after = store.jobs.get(job.id)
    assert after is not None and after.status == JobStatus.QUEUED and after.progress == 0
    messages = store.redis.lrange(queue_name(MODEL), 0, -1)
    assert [job_id_of(m) for m in messages] == [job.id]


def test_a_claimed_or_finished_job_is_not_requeued(
    store: JobStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = settings_for(redis_server.url, tmp_path)
    claimed = in_progress(store)
    store.claims.claim(claimed.id, "w:1:t", 60)
    queued = store.jobs.create(Job(model=MODEL, prompt="p"))
    assert not requeue_job(store.jobs, settings, claimed.id)
    assert not requeue_job(store.jobs, settings, queued.id)
    after = store.jobs.get(claimed.id)
    assert after is not None and after.status == JobStatus.IN_PROGRESS
    assert store.redis.llen(queue_name(MODEL)) == 0  # no message sent for either


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
