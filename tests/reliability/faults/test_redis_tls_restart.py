"""A TLS-only Redis (rediss://, AOF on) restarted while jobs are queued and running: as
test_redis_restart, with the workers, the job store and the enqueueing all over TLS (the broker on
hyv.service.broker's transport, whose failed acks free the worker's prefetch slot). Every job
completes once, none is lost, and both workers still take jobs afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer, wait_for_workers
from tests.reliability.faults.conftest import MEDIUM, MODEL, READY_TIMEOUT_S, Stack, make_settings
from tests.service.redis_tls import make_redis_tls

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2
JOBS_PER_ROUND = 5  # two workers: two run, three wait in the queue
WORKERS = 2


@pytest.fixture(scope="module")
def stack(fault_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("tls-stack")
    server = RedisServer(root / "redis", persist=True, tls=make_redis_tls(root / "certs")).start()
    settings = make_settings(root, server.url, fault_bundle)
    stack = Stack(root, server, settings, JobStore.from_url(server.url, settings))
    try:
        for index in range(WORKERS):
            stack.add_worker(f"w{index + 1}", wait=False)
        wait_for_workers(server.url, MODEL, WORKERS, READY_TIMEOUT_S)
        yield stack
    finally:
        stack.stop()


# (how Redis stops, seconds it stays down), as in test_redis_restart: a clean restart, a crash, and an
# outage longer than a running job's claim lease (1.5 s): the jobs are requeued and their first runs stop.
VARIANTS = {"sigterm": ("sigterm", 0.5), "sigkill": ("sigkill", 0.5), "down_past_the_lease": ("sigkill", 3.0)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tls_redis_restart_with_jobs_queued_and_running(
    stack: Stack, variant: str, record_faults: Callable[[int], None]
) -> None:
    how, down_s = VARIANTS[variant]
    assert stack.redis.url.startswith("rediss://")
    for _ in range(ROUNDS):
        jobs = [stack.submit(**MEDIUM, seed=i) for i in range(JOBS_PER_ROUND)]
        stack.wait_running([job.id for job in jobs], WORKERS)
        assert stack.store.jobs.queue_depth(MODEL) >= JOBS_PER_ROUND - WORKERS
        stack.restart_redis(how, down_s)
        for job in jobs:
            stack.assert_completed(job.id, frames=MEDIUM["num_frames"])
    # A worker whose ack failed while Redis was down and kept its prefetch slot would never take
    # another job: both must be running one at once.
    after = [stack.submit(**MEDIUM, seed=100 + i) for i in range(WORKERS)]
    stack.wait_running([job.id for job in after], WORKERS)
    for job in after:
        stack.assert_completed(job.id, frames=MEDIUM["num_frames"])
    record_faults(ROUNDS)
