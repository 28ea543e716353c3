"""What the worker's per-step callbacks read and write, without a Redis round trip per step.

- `RunningJob`: the job a pool process runs, its local cancel event and the step it is at.
- `HandBackDeadline`: when a stopping worker's running job goes back to its queue (set by the stop
  signals, hyv.service.worker_shutdown), read with the cancel event after every step.
- `CancelWatch`: one pub/sub subscription per pool process, on `hyv:cancel-requests:{host}` (where
  CancelRequests.request publishes the id of a running job): a message sets the running job's
  cancel event, so the sampler's check after every denoising step reads a local threading.Event.
  A lost message cannot lose a cancel: the flag `hyv:cancel:{id}` is also read when a job starts
  (the cancel may predate it), after every (re)subscription, and with every progress write.
- `ProgressWriter`: stage/step/progress to the job records at most every `progress_interval_s`, and
  always a stage's first and last report, so status reads and the SSE feed see every stage begin
  and end (and the final denoising step) whatever the interval.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hyv.service.job_cancels import CancelRequests
from hyv.service.job_records import JobRecords

logger = logging.getLogger(__name__)

CancelVia = Literal["pubsub", "flag"]
POLL_S = 1.0  # how often the listener looks at its stop event
RETRY_S = 1.0  # wait before subscribing again after losing Redis


class HandBackDeadline:
    """When the running job is handed back to its queue: never, until the worker is asked to stop.
    Written from signal handlers (one attribute store: no lock a handler could wait on), read after
    every denoising step and decoded tile."""

    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic()

    def start(self, grace_s: float) -> bool:
        """The grace starts now, unless it already runs; True if it started."""
        if self.at is not None:
            return False
        self.at = time.monotonic() + grace_s
        return True

    def cut_short(self) -> None:
        self.at = time.monotonic()

    def clear(self) -> None:
        self.at = None

    def due(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


@dataclass
class RunningJob:
    job_id: str
    token: str
    lost: threading.Event = field(default_factory=threading.Event)  # another worker owns it now
    cancel: threading.Event = field(default_factory=threading.Event)
    hand_back: HandBackDeadline = field(default_factory=HandBackDeadline)  # the pool process's own
    stage: str | None = None  # the last stage the pipeline reported
    step: int = 0  # the last denoising step the pipeline reported (kept locally at every step)
    cancel_via: CancelVia | None = None  # how the cancel arrived
    cancel_step: int | None = None  # `step` when it arrived
    progress_writes: int = 0
    # What the run renders with: the worker's model, the plan's steps and guidance (the run log shows it).
    rendered: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stop_requested(self) -> bool:
        """The pipeline's cancel hook: local reads, no network."""
        return self.cancel.is_set() or self.lost.is_set() or self.hand_back.due()

    def lose(self, why: str) -> None:
        """Another worker owns the job now: the run stops at its next step and writes nothing."""
        if not self.lost.is_set():
            self.lost.set()
            logger.error(f"lost the claim on the running job: {why}", extra={"job_id": self.job_id})

    def request_cancel(self, via: CancelVia) -> None:
        with self._lock:
            if self.cancel.is_set():
                return
            self.cancel_via, self.cancel_step = via, self.step
            self.cancel.set()
        logger.info(
            "cancel requested",
            extra={"job_id": self.job_id, "via": via, "stage": self.stage, "step": self.step},
        )

    def summary(self) -> dict[str, Any]:
        """For the run's end entry in the delivery log (JobClaims.log_run)."""
        found: dict[str, Any] = {
            "stage": self.stage,
            "step": self.step,
            "progress_writes": self.progress_writes,
        }
        if self.rendered:
            found["rendered"] = self.rendered
        if self.cancel_via is not None:
            found.update(cancel_via=self.cancel_via, cancel_step=self.cancel_step)
        return found


class CancelWatch:
    """The pool process's subscription to its cancel channel, in a daemon thread."""

    def __init__(
        self, cancel_requests: CancelRequests, hostname: str, current: Callable[[], RunningJob | None]
    ) -> None:
        self.cancel_requests = cancel_requests
        self.channel = cancel_requests.channel(hostname)
        self._current = current
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hyv-cancel-watch", daemon=True)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def start(self, timeout_s: float = 10.0) -> bool:
        """Start listening; True once the subscription is confirmed (else it keeps trying, and
        cancels arrive with the progress writes meanwhile)."""
        self._thread.start()
        if not self._subscribed.wait(timeout_s):
            logger.warning("not subscribed to the cancel channel yet", extra={"channel": self.channel})
            return False
        return True

    def stop(self) -> None:
        self._stop.set()

    def check_flag(self, running: RunningJob) -> None:
        """Read the job's cancel flag once (a job starting, or a gap in the subscription)."""
        if self.cancel_requests.is_requested(running.job_id):
            running.request_cancel("flag")

    def _loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self.cancel_requests.redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=POLL_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # also after redis-py reconnected by itself
                        self._subscribed.set()
                        running = self._current()
                        if running is not None:  # a cancel may have been sent while we were away
                            self.check_flag(running)
                    elif message["type"] == "message":
                        self._deliver(_text(message["data"]))
            except Exception:  # Redis went away: subscribe again (the writes still carry the flag)
                self._subscribed.clear()
                logger.warning("cancel channel lost; subscribing again", exc_info=True)
                self._stop.wait(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _deliver(self, job_id: str) -> None:
        running = self._current()
        if running is not None and running.job_id == job_id:
            running.request_cancel("pubsub")
        else:  # it ended meanwhile (or it is not ours any more): nothing to stop
            logger.info("cancel for a job not running here", extra={"job_id": job_id})


class ProgressWriter:
    """The pipeline's progress reports -> JobRecords.update_progress, throttled to `interval_s`.

    A report is written at once when it starts a stage or is the stage's last one (step == total);
    others wait until `interval_s` has passed since the last write (0 = write every report). The
    unwritten fields are kept (`unwritten()`) for the job's final write. Every write also brings
    back the job's cancel flag: the fallback to CancelWatch's message."""

    def __init__(
        self,
        jobs: JobRecords,
        running: RunningJob,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.jobs = jobs
        self.running = running
        self.interval_s = interval_s
        self._clock = clock
        self._pending: dict[str, Any] = {}
        self._last_write = -math.inf

    def report(self, stage: str, step: int, total: int, fraction: float) -> None:
        running = self.running
        fields: dict[str, Any] = {"stage": stage, "progress": min(99, int(fraction * 100))}
        if stage == "denoise":
            fields.update(step=step, total_steps=total)
            running.step = step
        boundary = stage != running.stage or step >= total
        running.stage = stage
        self._pending.update(fields)
        if boundary or self._due():
            self.flush()

    def note(self, **fields: Any) -> None:
        """Fields to write with the next progress write (e.g. content_bytes as the MP4 grows)."""
        self._pending.update(fields)
        if self._due():
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        fields, self._pending = self._pending, {}
        self._last_write = self._clock()
        self.running.progress_writes += 1
        written, cancel = self.jobs.update_progress(self.running.job_id, self.running.token, **fields)
        if not written:  # the claim is not ours any more: stop at the next step, write nothing else
            self.running.lose("its progress write was refused")
        elif cancel:
            self.running.request_cancel("flag")

    def unwritten(self) -> dict[str, Any]:
        return dict(self._pending)

    def _due(self) -> bool:
        return self._clock() - self._last_write >= self.interval_s


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
