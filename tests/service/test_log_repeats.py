"""hyv/service/log.py RepeatLimiter: a warning that repeats is logged once per interval, and the
repeats it held back are counted in one summary record when the interval ends."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from hyv.service.log import RepeatLimiter, job_context

pytestmark = pytest.mark.timeout(30)

LOGGER = logging.getLogger("hyv.test.repeats")


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER.name]


def wait_for_records(caplog: pytest.LogCaptureFixture, count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(records(caplog)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_hundred_repeats_in_a_second_log_once_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER.name)
    limiter = RepeatLimiter(interval_s=1.0)
    started = time.monotonic()
    logged = [
        limiter.log(LOGGER, logging.WARNING, "lost the claim", extra={"job_id": "job-1"}) for _ in range(100)
    ]
    assert time.monotonic() - started < 1.0  # all within the interval
    assert logged == [True] + [False] * 99
    assert [r.getMessage() for r in records(caplog)] == ["lost the claim"]
    assert records(caplog)[0].job_id == "job-1"  # type: ignore[attr-defined]

    wait_for_records(caplog, 2)  # the summary comes when the interval ends, with no further repeat
    summary = records(caplog)[1]
    assert summary.getMessage() == "lost the claim (suppressed 99 repeats in the last 1 s)"
    assert summary.levelno == logging.WARNING
    assert summary.suppressed == 99  # type: ignore[attr-defined]
    assert summary.job_id == "job-1"  # type: ignore[attr-defined]
    assert summary.created - records(caplog)[0].created >= 0.95

    assert limiter.log(LOGGER, logging.WARNING, "lost the claim", extra={"job_id": "job-1"})  # a new interval
    limiter.flush()  # nothing held back: no summary
    assert [r.getMessage() for r in records(caplog)][2:] == ["lost the claim"]


def test_different_messages_jobs_and_levels_are_not_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER.name)
    limiter = RepeatLimiter(interval_s=60.0)
    for _ in range(3):
        limiter.log(LOGGER, logging.WARNING, "slow step %d", 1)
        limiter.log(LOGGER, logging.WARNING, "slow step %d", 2)  # other arguments: another text
        limiter.log(LOGGER, logging.ERROR, "slow step %d", 1)
        with job_context("job-a"):
            limiter.log(LOGGER, logging.WARNING, "slow step %d", 1)
        limiter.log(LOGGER, logging.WARNING, "slow step %d", 1, extra={"job_id": "job-b"})
    seen = [(r.levelname, r.getMessage(), getattr(r, "job_id", None)) for r in records(caplog)]
    assert seen == [
        ("WARNING", "slow step 1", None),
        ("WARNING", "slow step 2", None),
        ("ERROR", "slow step 1", None),
        ("WARNING", "slow step 1", "job-a"),
        ("WARNING", "slow step 1", "job-b"),
    ]
    limiter.flush()  # each held back 2
    summaries = [(r.getMessage(), getattr(r, "job_id", None)) for r in records(caplog)[5:]]
    assert sorted(summaries, key=str) == sorted(
        [
            ("slow step 1 (suppressed 2 repeats in the last 60 s)", None),
            ("slow step 2 (suppressed 2 repeats in the last 60 s)", None),
            ("slow step 1 (suppressed 2 repeats in the last 60 s)", None),
            ("slow step 1 (suppressed 2 repeats in the last 60 s)", "job-a"),
            ("slow step 1 (suppressed 2 repeats in the last 60 s)", "job-b"),
        ],
        key=str,
    )


def test_repeats_from_many_threads_are_each_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER.name)
    limiter = RepeatLimiter(interval_s=60.0)

    def repeat() -> None:
        for _ in range(250):
            limiter.log(LOGGER, logging.WARNING, "heartbeat failed")

    threads = [threading.Thread(target=repeat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    limiter.flush()
    assert [r.getMessage() for r in records(caplog)] == [
        "heartbeat failed",
        "heartbeat failed (suppressed 999 repeats in the last 60 s)",
    ]


def test_a_repeat_after_the_interval_logs_the_summary_itself(caplog: pytest.LogCaptureFixture) -> None:
    """Even if the timer has not run (a forked child has no timer threads), a repeat that finds its
    interval over says what was held back before it is logged."""
    caplog.set_level(logging.WARNING, LOGGER.name)
    limiter = RepeatLimiter(interval_s=0.2)
    limiter.log(LOGGER, logging.WARNING, "lost the claim")
    limiter.log(LOGGER, logging.WARNING, "lost the claim")
    for interval in limiter._open.values():
        assert interval.timer is not None
        interval.timer.cancel()  # as if the thread were gone
    time.sleep(0.3)
    assert limiter.log(LOGGER, logging.WARNING, "lost the claim")
    assert [r.getMessage() for r in records(caplog)] == [
        "lost the claim",
        "lost the claim (suppressed 1 repeats in the last 0.2 s)",
        "lost the claim",
    ]
    limiter.flush()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RepeatLimiter(interval_s=0)
