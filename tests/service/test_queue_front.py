"""A requeued job goes to the front of its queue: kombu's own consumption (basic_get: the lists in
priority order, each from its tail, as BRPOP) takes it before the jobs submitted after it, and its
queue position says 1. A worker taking back a job whose claim names a process of this machine that
is gone, its main process too (requeue_orphans), does it at once, without waiting out the claim's
lease."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from hyv.service.celery_app import enqueue
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_runner import requeue_job
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.queue_front import move_to_front
from hyv.service.queue_reaper import job_id_of
from hyv.service.run_tokens import process_is_gone, process_stamp
from hyv.service.settings import Settings, queue_name
from hyv.service.worker_process import WorkerProcess
from tests.service.conftest import wait_until
from tests.service.test_run_tokens import worker_like

MODEL = "front-model"
QUEUE = queue_name(MODEL)


@pytest.fixture
def store(redis_server: RedisServer) -> JobStore:
    """A database of its own: the session's workers beat on database 0 and would requeue this
    module's unclaimed in-progress jobs themselves."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/14")
    client.flushdb()
    return JobStore.connect(client)


@pytest.fixture
def settings(store: JobStore, tmp_path: Path) -> Settings:
    kwargs = store.redis.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs['db']}"
    return Settings(redis_url=url, data_dir=tmp_path, model_name=MODEL, job_lease_seconds=600)


def submit(store: JobStore, settings: Settings) -> Job:
    job = store.jobs.create(Job(model=MODEL, prompt="p"))
    enqueue(job, settings)
    return job


def started(store: JobStore, settings: Settings, holder: str | None = None) -> Job:
    """A job a run had taken (its message consumed: none waits), held by `holder`'s claim if given."""
    job = store.jobs.create(Job(model=MODEL, prompt="p"))
    if holder is not None:
        assert store.claims.claim(job.id, holder, settings.job_lease_seconds) == "claimed"
    written, running = store.jobs.transition(job.id, [JobStatus.QUEUED], status=JobStatus.IN_PROGRESS)
    assert written and running is not None
    return running


def take(settings: Settings) -> str | None:
    """The job id of the message a worker of the queue would get next (kombu's basic_get)."""
    with Connection(settings.redis_url) as connection:
        message: Any = connection.default_channel.basic_get(QUEUE, no_ack=True)
        if message is None:
            return None
        args, _, _ = message.decode()  # Celery's task message: [args, kwargs, embed]
        return str(args[0])


def test_a_requeued_job_runs_before_the_jobs_submitted_after_it(store: JobStore, settings: Settings) -> None:
    first = started(store, settings)
    later = [submit(store, settings) for _ in range(3)]
    second = started(store, settings)  # started by another worker meanwhile, say
    assert requeue_job(store.jobs, settings, first.id)
    assert requeue_job(store.jobs, settings, second.id)
    positions = {job.id: store.jobs.queue_position(job.id, MODEL) for job in [first, second, *later]}
    assert positions == {second.id: 1, first.id: 2, later[0].id: 3, later[1].id: 4, later[2].id: 5}
    assert [take(settings) for _ in range(6)] == [second.id, first.id, *(job.id for job in later), None]


def test_moving_a_message_that_no_longer_waits_changes_nothing(store: JobStore, settings: Settings) -> None:
    waiting = submit(store, settings)
    assert not move_to_front(store.redis, QUEUE, "video_" + "0" * 24)
    assert move_to_front(store.redis, QUEUE, waiting.id)
    assert [job_id_of(m) for m in store.redis.lrange(QUEUE, 0, -1)] == [waiting.id]


def test_a_dead_process_of_this_machine_gives_its_job_back_at_once(
    store: JobStore, settings: Settings
) -> None:
    host = socket.gethostname()
    main, pool = worker_like()  # a worker killed whole: its pool process and its main process
    dead_holder = f"{host}:{pool}:{process_stamp(pool)}:task-1"
    os.killpg(main.pid, signal.SIGKILL)
    main.wait()
    wait_until(lambda: process_is_gone(dead_holder), 5)
    main, pool = worker_like()  # a pool process lost while its main process lives
    pool_lost = f"{host}:{pool}:{process_stamp(pool)}:task-4"
    os.kill(pool, signal.SIGKILL)
    dead = started(store, settings, dead_holder)
    alive = started(store, settings, f"{host}:{os.getpid()}:{process_stamp()}:task-2")
    elsewhere = started(store, settings, f"another-{host}:{pool}:{process_stamp()}:task-3")
    lost_pool = started(store, settings, pool_lost)
    waiting = submit(store, settings)

    process = WorkerProcess(settings)
    assert process.requeue_orphans() == [dead.id]
    found = store.jobs.get(dead.id)
    assert found is not None and found.status == JobStatus.QUEUED and store.claims.holder(dead.id) is None
    assert store.jobs.queue_position(dead.id, MODEL) == 1
    assert take(settings) == dead.id and take(settings) == waiting.id
    os.killpg(main.pid, signal.SIGKILL)
    main.wait()
    # Alive; not for this machine to judge; or left to its live main process: their leases decide.
    for job in (alive, elsewhere, lost_pool):
        kept = store.jobs.get(job.id)
        assert kept is not None and kept.status == JobStatus.IN_PROGRESS and store.claims.holder(job.id)
