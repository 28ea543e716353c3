"""The pool process's stop signals in this process (a busy one: an idle one ends, which the fault
tests show with real workers): SIGUSR2 from the main process or a first SIGTERM starts the running
job's grace, a second SIGTERM cuts it short, the job's end clears it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from hyv.service.running_job import HandBackDeadline, RunningJob
from hyv.service.worker_shutdown import MAIN_STOPPING_SIGNAL, StopSignals, tell_pool_processes


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, MAIN_STOPPING_SIGNAL)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_grace_then_a_second_sigterm_hands_the_job_back_now(restore_handlers: None) -> None:
    deadline = HandBackDeadline()
    running = RunningJob("video_" + "0" * 24, "token", hand_back=deadline)
    stop = StopSignals(deadline, 30.0, busy=lambda: True)
    stop.install()

    tell_pool_processes([os.getpid()])  # what the main process sends as its shutdown starts
    assert deadline.at is not None and 29 < deadline.at - time.monotonic() <= 30
    assert not running.stop_requested()
    first = deadline.at
    os.kill(os.getpid(), signal.SIGTERM)  # the group's SIGTERM too: the same grace, not a new one
    assert deadline.at == first and not running.stop_requested()
    os.kill(os.getpid(), signal.SIGTERM)  # again: at the next step
    assert deadline.due() and running.stop_requested()

    stop.job_ended()
    assert deadline.at is None and not running.stop_requested()
    os.kill(os.getpid(), signal.SIGTERM)  # the next job starts its own grace
    assert deadline.at is not None and not deadline.due()


def test_a_zero_grace_hands_back_at_the_next_step(restore_handlers: None) -> None:
    deadline = HandBackDeadline()
    StopSignals(deadline, 0.0, busy=lambda: True).install()
    tell_pool_processes([os.getpid(), 2**22 + 1])  # a pool process already gone is skipped
    assert deadline.due()
    with pytest.raises(ValueError, match="grace_s must be >= 0, got -1"):
        StopSignals(deadline, -1, busy=lambda: True)
