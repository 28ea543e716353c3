"""Queued jobs whose Celery message is gone: put back on the queue, once.

A job is `queued` in its record and has a message in the broker (kombu's Redis transport: the
queue's lists, one per priority step, and the `unacked` hash of messages handed to a worker and not
yet acknowledged). If the message is lost - Redis crashed between handing it to a worker and that
worker recording its claim, then the worker died - nothing would ever run the job: the claim reaper
(hyv.service.worker_process.requeue_orphans) only sees jobs in progress.

`QueueReaper.sweep`, run by every worker's beat (one sweep per model per interval, whoever takes the
lock), looks at the model's queued jobs older than `queued_reap_after_seconds` that nobody holds,
and at the job ids the broker's messages name (Celery's `argsrepr` header). A job missing from the
broker in two sweeps in a row (a message is briefly in neither place while a worker takes it) is
sent again. Should the old message come back (an unacked message restored), the job gets two
deliveries; the claim protocol (hyv.service.job_claims) runs it once and drops the other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

import redis

from hyv.service.job_claims import JobClaims
from hyv.service.job_model import JobStatus
from hyv.service.job_records import JobRecords, text

logger = logging.getLogger(__name__)

# kombu's Redis transport: where it keeps a queue's messages (kombu.transport.redis.Channel).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"
LOCK_KEY = "hyv:queue-reaper:{queue}"


def broker_lists(queue: str) -> list[str]:
    """The lists kombu keeps `queue`'s waiting messages in, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def job_id_of(raw: bytes | str) -> str | None:
    """The job id a Celery message (kombu's JSON envelope) carries, from its `argsrepr` header."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash's value: [message, exchange, routing key]
            message = message[0]
        argsrepr = str(message["headers"]["argsrepr"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    start = argsrepr.find("video_")
    return argsrepr[start : start + 30] if start >= 0 else None


class QueueReaper:
    """One model queue's sweep for queued jobs without a message; `send(job_id)` re-enqueues one."""

    def __init__(
        self,
        redis_client: redis.Redis,
        jobs: JobRecords,
        claims: JobClaims,
        model: str,
        queue: str,
        after_seconds: float,
        send: Callable[[str], None],
    ) -> None:
        self.redis = redis_client
        self.jobs = jobs
        self.claims = claims
        self.model = model
        self.queue = queue
        self.after_seconds = after_seconds
        self.send = send
        self._missing_before: set[str] = set()  # missing from the broker at the last sweep

    def sweep(self, now: float | None = None) -> list[str]:
        """Re-enqueue the jobs missing from the broker in this sweep and the one before; returns
        their ids. Only the worker holding the model's lock sweeps (the others return [])."""
        now = time.time() if now is None else now
        lock_ms = max(1, int(self.after_seconds * 500))
        if not self.redis.set(LOCK_KEY.format(queue=self.queue), "1", nx=True, px=lock_ms):
            return []
        queued = self.jobs.keys.queued(self.model)
        candidates = {text(i) for i in self.redis.zrangebyscore(queued, "-inf", now - self.after_seconds)}
        if not candidates:
            self._missing_before = set()
            return []
        missing = {
            job_id for job_id in candidates - self.broker_job_ids() if self.claims.holder(job_id) is None
        }
        resend = sorted(missing & self._missing_before)
        self._missing_before = missing - set(resend)
        sent = []
        for job_id in resend:
            job = self.jobs.get(job_id)
            if job is None or job.status != JobStatus.QUEUED:
                continue
            self.send(job_id)
            self.claims.log_run(job_id, "reenqueued", reason="no message in the broker")
            logger.warning("re-enqueued a queued job whose message was lost", extra={"job_id": job_id})
            sent.append(job_id)
        return sent

    def broker_job_ids(self) -> set[str]:
        """The job ids named by this queue's waiting messages and by every unacknowledged one."""
        pipe = self.redis.pipeline(transaction=False)
        for name in broker_lists(self.queue):
            pipe.lrange(name, 0, -1)
        pipe.hvals(UNACKED_KEY)
        found: set[str] = set()
        for messages in pipe.execute():
            found.update(_ids(messages))
        return found


def _ids(messages: Iterable[bytes | str]) -> set[str]:
    return {job_id for raw in messages if (job_id := job_id_of(raw)) is not None}
