"""Cancel requests: a job's cancel flag (`hyv:cancel:{id}`) and the message to the worker running it
(its `hyv:cancel-requests:{host}` channel). Key layout: hyv.service.job_keys."""

from __future__ import annotations

import time

from hyv.service import metrics
from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_records import JobRecords


class CancelRequests:
    """Ask for a job's cancellation (the API), and learn of it (the worker: the flag, or the message
    on its channel, read by hyv.service.running_job.CancelWatch)."""

    def __init__(self, records: JobRecords, keys: JobKeys = DEFAULT_KEYS) -> None:
        self.records = records
        self.redis = records.redis
        self.keys = keys

    def request(self, job_id: str) -> Job | None:
        """Flag the job; a queued one becomes cancelled at once (it never runs); for a running one
        the job id is also published on its worker's cancel channel, which sets the worker's local
        cancel event (hyv.service.running_job): it stops after the denoising step in flight.
        Returns the job as it is now (None if missing).

        The flag is set before the message is sent, so a worker that subscribes or starts the job
        after the message went out still finds the flag (it reads it once when the job starts, and
        again with its progress writes)."""
        if self.records.get(job_id) is None:
            return None
        self.redis.set(self.keys.cancel(job_id), b"1", ex=self.records.record_ttl_seconds)
        now = int(time.time())
        cancelled, job = self.records.transition(
            job_id,
            [JobStatus.QUEUED],
            status=JobStatus.CANCELLED,
            completed_at=now,
            error_code="cancelled",
            error_message="cancelled before it started",
        )
        if cancelled and job is not None:
            # This write ended the job: no worker will (its delivery finds the job finished and is
            # dropped), so it is counted here, once.
            metrics.job_finished(job.model, JobStatus.CANCELLED)
        if job is not None and job.status == JobStatus.IN_PROGRESS and job.worker:
            self.redis.publish(self.channel(job.worker), job_id)
        return job

    def is_requested(self, job_id: str) -> bool:
        """Whether the job's cancel flag is set (one round trip)."""
        return bool(self.redis.exists(self.keys.cancel(job_id)))

    def channel(self, hostname: str) -> str:
        """A worker's channel for cancel requests: the id of a job it runs that was cancelled."""
        return self.keys.cancel_requests(hostname)
