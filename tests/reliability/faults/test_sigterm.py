"""SIGTERM to a busy worker: within its grace period it finishes the job, or the job is requeued and
another worker completes it. Never lost, never run by two workers at once, completed once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from hyv.service.launcher import stop_worker
from tests.reliability.faults.conftest import MEDIUM, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2
GRACE_S = 10.0  # launcher.stop_worker's: SIGTERM, then SIGKILL of the group after this long


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=2)


def _replace(stack: Stack, name: str) -> None:
    """The stopped worker's place taken by a fresh one, so each round starts with two."""
    stack.workers.pop(name)
    stack.add_worker(f"{name}-next-{time.monotonic_ns()}")


def test_sigterm_to_the_main_process_finishes_the_job(
    stack: Stack, record_faults: Callable[[int], None]
) -> None:
    """What `docker stop` and Kubernetes do: SIGTERM to the worker's main process, Celery's warm
    shutdown. It takes no new job, finishes the running one, then exits."""
    for _ in range(ROUNDS):
        job = stack.submit(**MEDIUM)
        stack.wait_running([job.id], 1)
        running = stack.store.jobs.get(job.id)
        assert running is not None
        name = stack.worker_running(running)
        process = stack.workers[name]
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(GRACE_S) == 0, stack.worker_log(name)[-3000:]
        done = stack.assert_completed(job.id, frames=MEDIUM["num_frames"])
        assert (done.worker, done.attempts) == (running.worker, 1)  # finished where it ran
        _replace(stack, name)
    record_faults(ROUNDS)


@pytest.mark.parametrize("variant", ["process_group", "grace_expired"])
def test_sigterm_requeues_what_it_cannot_finish(
    stack: Stack, variant: str, record_faults: Callable[[int], None]
) -> None:
    """process_group: SIGTERM to every process of the worker at once (systemd's default KillMode,
    `kill -TERM -<pgid>`), the pool process included. grace_expired: the job outlasts the grace
    period and the worker is then killed (launcher.stop_worker). Either way the job goes back to
    the queue and the other worker completes it."""
    for _ in range(ROUNDS):
        request = {**MEDIUM, "steps": 1000} if variant == "grace_expired" else MEDIUM
        job = stack.submit(**request)
        stack.wait_running([job.id], 1)
        running = stack.store.jobs.get(job.id)
        assert running is not None
        name = stack.worker_running(running)
        process = stack.workers[name]
        if variant == "process_group":
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(GRACE_S)
        else:
            stop_worker(process, grace_s=0.5)
        # The 1000-step job reruns from step 0 on the other worker: over 2 min on a slow 2-core machine.
        done = stack.assert_completed(job.id, frames=request["num_frames"], timeout_s=360.0)
        assert done.worker != running.worker and done.attempts == 2, done
        _replace(stack, name)
    record_faults(ROUNDS)
