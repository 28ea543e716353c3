"""The job store's parts (hyv.service.job_store) and LocalStorage against a real Redis (no worker
needed), and the metrics rendering."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from hyv.service.job_model import Job, JobStatus, owner_for_key
from hyv.service.job_records import ActiveJobLimitError
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.settings import Settings
from hyv.service.storage import LocalStorage


@pytest.fixture
def fresh(redis_server: RedisServer) -> JobStore:
    """The job store's parts on their own, emptied Redis db."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/15")
    client.flushdb()
    return JobStore.connect(client)


def make(store: JobStore, owner: str = "o", model: str = "m", **fields: Any) -> Job:
    return store.jobs.create(Job(owner=owner, model=model, prompt="p", **fields))


def test_create_get_update_publishes_versions(fresh: JobStore) -> None:
    job = make(fresh)
    assert job.status == JobStatus.QUEUED and job.version == 1 and job.id.startswith("video_")
    assert len(job.id) == len("video_") + 24
    assert fresh.jobs.get(job.id) == job
    updated = fresh.jobs.update(job.id, status="in_progress", stage="denoise", step=2, total_steps=10)
    assert updated is not None and updated.version == 2 and updated.status == JobStatus.IN_PROGRESS
    assert fresh.jobs.get("video_" + "0" * 24) is None and fresh.jobs.get("../etc") is None
    assert fresh.jobs.update("video_" + "0" * 24, step=1) is None
    with pytest.raises(ValueError, match="nonsense"):
        fresh.jobs.update(job.id, nonsense=1)
    with pytest.raises(ValueError, match="id"):
        fresh.jobs.update(job.id, id="video_x")


def test_listing_cursor_order_and_owner_isolation(fresh: JobStore) -> None:
    ids = [make(fresh).id for _ in range(5)]
    make(fresh, owner="someone-else")
    desc = [j.id for j in fresh.jobs.list_for_owner("o", limit=10)]
    assert desc == ids[::-1]
    assert [j.id for j in fresh.jobs.list_for_owner("o", limit=10, order="asc")] == ids
    page1 = fresh.jobs.list_for_owner("o", limit=2)
    page2 = fresh.jobs.list_for_owner("o", after=page1[-1].id, limit=2)
    assert [j.id for j in page1 + page2] == ids[::-1][:4]
    with pytest.raises(ValueError, match="after"):
        fresh.jobs.list_for_owner("someone-else", after=ids[0])
    fresh.jobs.delete(ids[0])
    assert [j.id for j in fresh.jobs.list_for_owner("o", order="asc")] == ids[1:]


def test_queue_position_and_active_count_follow_status(fresh: JobStore) -> None:
    a, b, c = (make(fresh).id for _ in range(3))
    other_model = make(fresh, model="other").id
    assert [fresh.jobs.queue_position(i) for i in (a, b, c, other_model)] == [1, 2, 3, 1]
    assert fresh.jobs.queued_count("o") == 4 and fresh.jobs.queue_depth("m") == 3
    fresh.jobs.update(a, status="in_progress")
    assert [fresh.jobs.queue_position(i) for i in (a, b, c)] == [None, 1, 2]
    assert fresh.jobs.queued_count("o") == 4 and fresh.jobs.running_ids() == [a]
    fresh.jobs.update(a, status="completed")
    assert fresh.jobs.queued_count("o") == 3 and fresh.jobs.running_ids() == []


def test_cancel_queued_is_final_and_guards_the_claim(fresh: JobStore) -> None:
    queued = make(fresh)
    cancelled = fresh.cancels.request(queued.id)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    assert fresh.cancels.is_requested(queued.id) and fresh.jobs.queue_position(queued.id) is None
    assert fresh.claims.claim(queued.id, "w1", 5) == "finished"  # a worker that gets its message drops it

    running = make(fresh)
    assert fresh.claims.claim(running.id, "w1", 5) == "claimed"
    assert fresh.claims.claim(running.id, "w2", 5) == "held"
    fresh.jobs.update(running.id, status="in_progress")
    after = fresh.cancels.request(running.id)
    assert after is not None and after.status == JobStatus.IN_PROGRESS  # the worker stops it
    assert fresh.cancels.is_requested(running.id)
    assert fresh.cancels.request("video_" + "1" * 24) is None


def test_claim_lease_expiry_and_renewal(fresh: JobStore) -> None:
    job = make(fresh)
    assert fresh.claims.claim(job.id, "w1", 0.2) == "claimed"
    assert fresh.claims.renew(job.id, "w1", 0.2)
    assert not fresh.claims.renew(job.id, "w2", 0.2)
    time.sleep(0.3)
    assert fresh.claims.holder(job.id) is None  # w1 stopped beating: the lease lapsed
    assert fresh.claims.claim(job.id, "w2", 5) == "claimed"
    assert not fresh.claims.renew(job.id, "w1", 5)  # w1 learns it lost the job
    fresh.claims.release(job.id, "w1")  # not its claim: no effect
    assert fresh.claims.holder(job.id) == "w2"
    fresh.jobs.update(job.id, status="completed")
    assert fresh.claims.claim(job.id, "w3", 5) == "finished"


def test_transition_is_compare_and_set(fresh: JobStore) -> None:
    job = make(fresh)
    written, now = fresh.jobs.transition(job.id, [JobStatus.IN_PROGRESS], status="completed")
    assert not written and now is not None and now.status == JobStatus.QUEUED and now.version == 1
    fresh.claims.claim(job.id, "w1", 5)
    written, _ = fresh.jobs.transition(job.id, [JobStatus.QUEUED], require_unclaimed=True, status="failed")
    assert not written
    written, now = fresh.jobs.transition(job.id, [JobStatus.QUEUED], status="in_progress")
    assert written and now is not None and now.status == JobStatus.IN_PROGRESS


def test_finish_only_by_the_claim_holder(fresh: JobStore) -> None:
    """A run whose lease lapsed (another worker took the job) cannot end it: its final write is
    refused atomically and changes nothing (fields, version, indexes, no event)."""
    job = make(fresh)
    assert fresh.claims.claim(job.id, "w1", 0.2) == "claimed"
    fresh.jobs.update(job.id, status="in_progress", stage="denoise", step=3)
    time.sleep(0.3)  # w1 stopped beating: its lease lapsed
    written, now = fresh.jobs.finish(job.id, "w1", JobStatus.FAILED, error_code="internal_error")
    assert not written and now is not None and now.status == JobStatus.IN_PROGRESS  # nobody holds it
    assert fresh.claims.claim(job.id, "w2", 5) == "claimed"  # another worker took it over
    before = fresh.jobs.get(job.id)
    pubsub = fresh.redis.pubsub()
    pubsub.subscribe(fresh.events.channel(job.id))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        written, now = fresh.jobs.finish(job.id, "w1", status, progress=100, completed_at=1)
        assert not written and now == before
    assert fresh.jobs.get(job.id) == before and fresh.jobs.running_ids() == [job.id]
    assert fresh.jobs.queued_count("o") == 1 and fresh.claims.holder(job.id) == "w2"
    assert pubsub.get_message(timeout=0.3) is None  # no event either

    written, now = fresh.jobs.finish(job.id, "w2", JobStatus.COMPLETED, progress=100, completed_at=1)
    assert written and now is not None and now.status == JobStatus.COMPLETED
    assert before is not None and now.version == before.version + 1 and now.progress == 100
    assert fresh.jobs.running_ids() == [] and fresh.jobs.queued_count("o") == 0
    message = pubsub.get_message(timeout=1)
    assert message is not None and b'"completed"' in message["data"]
    pubsub.close()
    written, _ = fresh.jobs.finish(job.id, "w2", JobStatus.FAILED)  # finished already: final
    assert not written and fresh.jobs.get(job.id) == now
    with pytest.raises(ValueError, match="final status"):
        fresh.jobs.finish(job.id, "w2", JobStatus.IN_PROGRESS)
    with pytest.raises(ValueError, match="token"):
        fresh.jobs.finish(job.id, "", JobStatus.COMPLETED)


def test_idempotency_keys(fresh: JobStore) -> None:
    owner = owner_for_key("sk-test")
    assert owner != "sk-test" and len(owner) == 64 and owner_for_key(None) == "anonymous"
    assert fresh.idempotency.get(owner, "k") is None
    assert fresh.idempotency.set(owner, "k", "video_a", "h1")
    assert not fresh.idempotency.set(owner, "k", "video_b", "h2")  # the first one wins
    assert fresh.idempotency.get(owner, "k") == ("video_a", "h1")
    assert fresh.idempotency.get("anonymous", "k") is None  # keys are per owner


def test_events_snapshot_then_newer_states_only(fresh: JobStore) -> None:
    job = make(fresh)

    async def collect() -> list[dict[str, Any]]:
        seen = []
        async for event in fresh.events.stream(job.id, poll_seconds=0.5):
            seen.append(event)
            if len(seen) == 1:
                for step in range(1, 4):
                    fresh.jobs.update(job.id, status="in_progress", stage="denoise", step=step)
                fresh.events.publish(job.id, seen[0])  # a stale duplicate: dropped
                fresh.jobs.update(job.id, status="completed", progress=100)
        return seen

    events = asyncio.run(asyncio.wait_for(collect(), 10))
    assert [e["event"] for e in events] == ["queued", "progress", "progress", "progress", "completed"]
    assert [e["job"]["version"] for e in events] == [1, 2, 3, 4, 5]

    async def after_the_end() -> list[dict[str, Any]]:
        return [e async for e in fresh.events.stream(job.id)]

    replay = asyncio.run(asyncio.wait_for(after_the_end(), 10))
    assert [e["event"] for e in replay] == ["completed"]  # a late subscriber gets the final state


def test_workers_registry(fresh: JobStore) -> None:
    fresh.workers.heartbeat("h:1", {"hostname": "h:1", "model": "m", "ready": True}, ttl_seconds=0.3)
    fresh.workers.heartbeat("h:2", {"hostname": "h:2", "model": "x", "ready": False}, ttl_seconds=5)
    assert [w["hostname"] for w in fresh.workers.live("m")] == ["h:1"]
    time.sleep(0.4)
    assert [w["hostname"] for w in fresh.workers.live()] == ["h:2"]


def test_local_storage_writer_part_rename_and_abort(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job_id = "video_" + "a" * 24
    writer = storage.open_writer(job_id)
    writer.write(b"abc")
    assert storage.partial_path(job_id).read_bytes() == b"abc"  # readable while it grows
    assert not storage.exists(job_id)
    writer.write(b"def")
    writer.close()
    assert storage.path(job_id).read_bytes() == b"abcdef" and not storage.partial_path(job_id).exists()

    other = "video_" + "b" * 24
    first = storage.open_writer(other)
    first.write(b"old")
    second = storage.open_writer(other)  # a redelivered job starts over in a new file
    second.write(b"new")
    first.abort()  # the stale writer cannot delete the new owner's file
    assert storage.partial_path(other).read_bytes() == b"new"
    second.abort()
    assert not storage.partial_path(other).exists()

    storage.save_input_image(job_id, b"png")
    storage.save_thumbnail(job_id, b"thumb")
    assert storage.load_input_image(job_id) == b"png"
    with pytest.raises(ValueError, match="not a job id"):
        storage.path("../../etc/passwd")
    assert storage.cleanup_expired(time.time(), ttl_seconds=3600) == []
    assert storage.cleanup_expired(time.time() + 7200, ttl_seconds=3600) == [job_id]
    assert not storage.exists(job_id) and not storage.thumbnail_path(job_id).exists()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYV_API_KEYS", "k1, k2")
    monkeypatch.setenv("HYV_PORT", "9000")
    monkeypatch.setenv("HYV_CORS_ORIGINS", '["http://a"]')
    settings = Settings()
    assert settings.api_keys == ["k1", "k2"] and settings.port == 9000
    assert settings.cors_origins == ["http://a"] and settings.queue_name == "hyv.hyv-small"
    with pytest.raises(ValueError, match="task_hard_time_limit"):
        Settings(task_soft_time_limit=10, task_hard_time_limit=5)


def test_service_variables_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """HYV_LOG_LEVEL and HYV_REDIS_SERVER go through Settings like every other HYV_* variable."""
    from hyv.service.log import configure_logging

    monkeypatch.setenv("HYV_LOG_LEVEL", "debug")
    monkeypatch.setenv("HYV_REDIS_SERVER", "/opt/redis/bin/redis-server")
    settings = Settings()
    assert (settings.log_level, settings.redis_server) == ("debug", "/opt/redis/bin/redis-server")
    monkeypatch.delenv("HYV_LOG_LEVEL")
    assert Settings().log_level == "INFO"
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(settings.log_level)
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


IMPORT_METRICS = """
import json, os, sys
from pathlib import Path
before = dict(os.environ)
import hyv.service.metrics as metrics
imported = {"env": dict(os.environ) == before, "created": sorted(os.listdir("."))}
folder = metrics.setup_metrics(metrics.get_settings())
metrics.job_finished("m", "completed")
print(json.dumps({**imported, "folder": str(folder), "exported": os.environ["PROMETHEUS_MULTIPROC_DIR"],
                  "files": sorted({p.name.split("_")[0] for p in folder.glob("*.db")})}))
"""


def test_importing_metrics_changes_nothing(tmp_path: Path) -> None:
    """Importing the metrics module sets no variable and creates no folder; setup_metrics, called
    by whoever starts a process, does both, and every metric (those without labels too, which
    prometheus-client binds to a file when they are created) lands there."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("HYV_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_METRICS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["env"] is True and report["created"] == []
    assert report["folder"] == report["exported"] == str(tmp_path.resolve() / "data" / "metrics")
    assert report["files"] == ["counter", "histogram"]


def test_metrics_after_a_job(submit: Callable[..., Job], store: JobStore, service_settings: Settings) -> None:
    from hyv.service import metrics

    metrics.setup_metrics(service_settings)  # what a process's starter does ($PROMETHEUS_MULTIPROC_DIR)
    job = submit(steps=3)
    metrics.job_submitted(service_settings.model_name, "t2v")
    metrics.observe_request("/v1/videos", "POST", 200, 0.004)

    def done() -> bool:
        current = store.jobs.get(job.id)
        return current is not None and current.finished

    from tests.service.conftest import wait_until

    wait_until(done, 30)
    body, content_type = metrics.render_metrics(store.jobs, store.workers, service_settings)
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in (
        "hyv_requests_total",
        "hyv_request_duration_seconds_bucket",
        "hyv_jobs_submitted_total",
        "hyv_jobs_finished_total",
        "hyv_queue_depth",
        "hyv_job_queue_wait_seconds_count",
        "hyv_job_stage_seconds_bucket",
        "hyv_denoise_step_seconds_count",
        "hyv_time_to_first_byte_seconds_count",
        "hyv_workers_ready",
        "hyv_worker_busy",
        "hyv_gpu_memory_bytes",
        "hyv_worker_resident_memory_bytes",
    ):
        assert name in text, name
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['hyv_jobs_finished_total{model="hyv-tiny",status="completed"}'] >= 1  # from the worker
    assert values["hyv_denoise_step_seconds_count"] >= 3
    assert values["hyv_workers_ready"] >= 1
    assert values['hyv_queue_depth{queue="hyv.hyv-tiny"}'] == 0
    resident = [v for k, v in values.items() if k.startswith("hyv_worker_resident_memory_bytes{worker=")]
    assert resident and all(1e8 < rss < 8e9 for rss in resident)  # each worker's RSS
    assert not any(k.startswith("hyv_gpu_memory_bytes{") for k in values)  # a CPU worker has no GPU memory
    # The metric files are the whole session's (one PROMETHEUS_MULTIPROC_DIR), long jobs of other
    # tests included: the mean per job is bounded, the sum depends on the machine's speed.
    denoise_jobs = values['hyv_job_stage_seconds_count{stage="denoise"}']
    assert denoise_jobs >= 1
    assert 0 < values['hyv_job_stage_seconds_sum{stage="denoise"}'] / denoise_jobs < 60


def test_the_active_job_cap_is_checked_where_the_job_is_created(fresh: JobStore) -> None:
    """Creation with `max_active` counts the owner's unfinished jobs in the same script that makes
    the job queued: at the cap, nothing is created; a finished job frees its slot."""
    kept = [fresh.jobs.create(Job(owner="k", model="m", prompt="p"), max_active=2) for _ in range(2)]
    refused = Job(owner="k", model="m", prompt="p")
    with pytest.raises(ActiveJobLimitError, match="k already has 2 unfinished jobs"):
        fresh.jobs.create(refused, max_active=2)
    assert fresh.jobs.get(refused.id) is None and fresh.jobs.queued_count("k") == 2
    assert fresh.jobs.queue_depth("m") == 2
    assert refused.id not in [j.id for j in fresh.jobs.list_for_owner("k")]
    fresh.jobs.create(Job(owner="other", model="m", prompt="p"), max_active=2)  # per owner
    fresh.cancels.request(kept[0].id)  # cancelled while queued: final, the slot is free
    fresh.jobs.create(Job(owner="k", model="m", prompt="p"), max_active=2)
    assert fresh.jobs.queued_count("k") == 2
