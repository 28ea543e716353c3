"""SIGTERM to a busy worker: the running job finishes within the worker's shutdown grace where it
ran, or, past the grace, goes back to the front of its queue, marked queued, and runs before the
jobs submitted after it; a worker killed outright (its grace ran out under `launcher.stop_worker`)
has its job taken back at once by a worker of the same machine. Never lost, never run by two
workers at once, completed once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from hyv.service.job_model import JobStatus
from hyv.service.launcher import stop_worker
from tests.reliability.faults.conftest import MEDIUM, SMALL, Stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 2
GRACE_S = 10.0  # launcher.stop_worker's: SIGTERM, then SIGKILL of the group after this long
LONGER = {**MEDIUM, "steps": 300}  # a few seconds: well past a half-second grace


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=2)


def _replace(stack: Stack, name: str) -> None:
    """The stopped worker's place taken by a fresh one, so each round starts with as many."""
    stack.workers.pop(name)
    stack.add_worker(f"{name}-next-{time.monotonic_ns()}")


def _stop(stack: Stack, name: str, target: str) -> None:
    """SIGTERM to the worker's main process (`docker stop`, Kubernetes: Celery's warm shutdown) or
    to every process of it (systemd's default KillMode, `launcher.stop_worker`, `hyv serve`)."""
    pid = stack.workers[name].pid
    if target == "main_process":
        os.kill(pid, signal.SIGTERM)
    else:
        os.killpg(pid, signal.SIGTERM)


def _claimed_at(stack: Stack, job_id: str) -> list[float]:
    runs = stack.store.claims.runs(job_id)
    return [r["t"] for r in runs if r["event"] == "delivery" and r["outcome"] == "claimed"]


@pytest.mark.parametrize("target", ["main_process", "process_group"])
def test_sigterm_finishes_the_job_within_the_grace(
    stack: Stack, target: str, record_faults: Callable[[int], None]
) -> None:
    """It takes no new job, finishes the running one where it runs, then exits."""
    for _ in range(ROUNDS):
        job = stack.submit(**MEDIUM)
        stack.wait_running([job.id], 1)
        running = stack.store.jobs.get(job.id)
        assert running is not None
        name = stack.worker_running(running)
        _stop(stack, name, target)
        assert stack.workers[name].wait(GRACE_S) == 0, stack.worker_log(name)[-3000:]
        done = stack.assert_completed(job.id, frames=MEDIUM["num_frames"])
        assert (done.worker, done.attempts) == (running.worker, 1)  # finished where it ran
        _replace(stack, name)
    record_faults(ROUNDS)


@pytest.mark.parametrize("target", ["main_process", "process_group"])
def test_past_its_grace_the_job_goes_back_to_the_front_of_its_queue(
    make_stack: Callable[..., Stack], target: str, record_faults: Callable[[int], None]
) -> None:
    """One worker with a half-second grace, a job running and one queued behind it: SIGTERM. The
    running job is handed back at its next step (queued, first in line: never a stale in_progress)
    and the worker exits; the next worker runs it first, then the one behind."""
    stack = make_stack(workers=1, shutdown_grace_seconds=0.5)
    try:
        _hand_back_rounds(stack, target)
    finally:
        stack.stop()
    record_faults(ROUNDS)


def _hand_back_rounds(stack: Stack, target: str) -> None:
    for round_ in range(ROUNDS):
        job = stack.submit(**LONGER)
        stack.wait_running([job.id], 1)
        behind = stack.submit(**SMALL)
        (name,) = stack.workers
        _stop(stack, name, target)
        assert stack.workers[name].wait(GRACE_S) == 0, stack.worker_log(name)[-3000:]

        handed = stack.store.jobs.get(job.id)
        assert handed is not None and handed.status == JobStatus.QUEUED, handed
        assert (handed.progress, handed.stage, handed.attempts, handed.content_bytes) == (0, None, 1, 0)
        assert stack.store.jobs.queue_position(job.id) == 1
        assert stack.store.jobs.queue_position(behind.id) == 2
        ended = [r for r in stack.store.claims.runs(job.id) if r["event"] == "end"]
        assert [r["outcome"] for r in ended] == ["requeued"]
        assert 0 < ended[0]["step"] < LONGER["steps"]

        stack.workers.pop(name)
        stack.add_worker(f"next-{round_}")
        done = stack.assert_completed(job.id, frames=LONGER["num_frames"], timeout_s=240)
        stack.assert_completed(behind.id, frames=SMALL["num_frames"])
        assert done.attempts == 2
        assert _claimed_at(stack, job.id)[-1] < _claimed_at(stack, behind.id)[0]  # it ran first


def test_a_killed_workers_job_is_taken_back_at_once(
    make_stack: Callable[..., Stack], record_faults: Callable[[int], None]
) -> None:
    """The grace ran out under `launcher.stop_worker` (SIGKILL of the group after half a second).
    The claims' lease is ten minutes here: the other worker's beat sees that the claim names a
    process of this machine that is gone and requeues the job within seconds, then runs it."""
    stack = make_stack(workers=2, job_lease_seconds=600)
    try:
        _kill_rounds(stack)
    finally:
        stack.stop()
    record_faults(ROUNDS)


def _kill_rounds(stack: Stack) -> None:
    for _ in range(ROUNDS):
        job = stack.submit(**LONGER)
        stack.wait_running([job.id], 1)
        running = stack.store.jobs.get(job.id)
        assert running is not None
        name = stack.worker_running(running)
        stop_worker(stack.workers[name], grace_s=0.5)
        killed_at = time.monotonic()

        def taken_back(job_id: str = job.id) -> bool:
            job_now = stack.store.jobs.get(job_id)
            return job_now is not None and (job_now.attempts == 2 or job_now.status == JobStatus.QUEUED)

        wait_until(taken_back, 15)
        assert time.monotonic() - killed_at < 15  # far within the lease
        done = stack.assert_completed(job.id, frames=LONGER["num_frames"], timeout_s=240)
        assert done.worker != running.worker and done.attempts == 2, done
        _replace(stack, name)
