"""The queue reaper (hyv.service.queue_reaper) against a real Redis: a queued job whose message is
missing from the broker in two sweeps is sent again, once; a job with a message waiting or handed
out, a claimed job, or a job queued only a moment ago is left alone."""

from __future__ import annotations

import json
import time

import pytest
import redis

from hyv.service.job_model import Job
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.queue_reaper import UNACKED_KEY, QueueReaper, broker_lists, job_id_of

QUEUE = "hyv.m"


@pytest.fixture
def fresh(redis_server: RedisServer) -> JobStore:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/13")
    client.flushdb()
    return JobStore.connect(client)


def message(job_id: str) -> str:
    """A Celery message as kombu's Redis transport stores it (only what the reaper reads)."""
    return json.dumps({"body": "e30=", "headers": {"task": "hyv.generate", "argsrepr": f"['{job_id}']"}})


def reaper(store: JobStore, sent: list[str]) -> QueueReaper:
    return QueueReaper(store.redis, store.jobs, store.claims, "m", QUEUE, 1.0, sent.append)


def sweep(r: QueueReaper, now: float) -> list[str]:
    r.redis.delete(f"hyv:queue-reaper:{QUEUE}")  # the lock: one sweep per interval in real life
    return r.sweep(now)


def test_job_id_of_a_waiting_and_an_unacked_message() -> None:
    job_id = "video_" + "a" * 24
    assert job_id_of(message(job_id)) == job_id
    assert job_id_of(json.dumps([json.loads(message(job_id)), "", QUEUE])) == job_id
    assert job_id_of(b"not json") is None and job_id_of(json.dumps({"headers": {}})) is None


def test_a_job_missing_from_the_broker_twice_is_sent_once(fresh: JobStore) -> None:
    sent: list[str] = []
    r = reaper(fresh, sent)
    lost = fresh.jobs.create(Job(model="m", prompt="p"))
    waiting = fresh.jobs.create(Job(model="m", prompt="p"))
    handed_out = fresh.jobs.create(Job(model="m", prompt="p"))
    claimed = fresh.jobs.create(Job(model="m", prompt="p"))
    fresh.redis.rpush(broker_lists(QUEUE)[2], message(waiting.id))  # a priority list
    fresh.redis.hset(UNACKED_KEY, "tag-1", json.dumps([json.loads(message(handed_out.id)), "", QUEUE]))
    fresh.claims.claim(claimed.id, "w:1:t", 60)
    now = time.time()
    assert sweep(r, now) == []  # queued less than after_seconds ago: not yet a suspect
    assert sweep(r, now + 5) == []  # missing once: could be between the list and the unacked hash
    assert sweep(r, now + 6) == [lost.id]
    assert sent == [lost.id]
    assert [e["event"] for e in fresh.claims.runs(lost.id)] == ["reenqueued"]
    fresh.redis.rpush(QUEUE, message(lost.id))  # what send() does
    assert sweep(r, now + 7) == [] and sweep(r, now + 8) == []
    assert sent == [lost.id]


def test_only_the_worker_holding_the_lock_sweeps(fresh: JobStore) -> None:
    sent: list[str] = []
    first, second = reaper(fresh, sent), reaper(fresh, sent)
    fresh.jobs.create(Job(model="m", prompt="p"))
    now = time.time() + 5
    first.sweep(now)
    assert second.sweep(now + 1) == []  # the lock of the first sweep holds for after_seconds / 2
    assert fresh.redis.pttl(f"hyv:queue-reaper:{QUEUE}") > 0
