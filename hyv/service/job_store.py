"""The job store: its parts on one Redis client, built together (same key layout, same record TTL).

    jobs         JobRecords       job records, their writes and indexes, listing (job_records.py)
    claims       JobClaims        claims with leases and the delivery log (job_claims.py)
    cancels      CancelRequests   cancel flags and the messages to workers (job_cancels.py)
    idempotency  IdempotencyKeys  Idempotency-Key records (idempotency.py)
    workers      WorkerRegistry   worker heartbeats (worker_registry.py)
    events       JobEvents        a job's pub/sub events (job_events.py)

Key layout: job_keys.py; Lua scripts: job_scripts.py. The API context and the worker take the parts
they use from here (hyv.service.api.context.AppContext, hyv.service.worker_process.WorkerProcess).
Every store takes its record TTL from the settings (job_records.record_ttl_seconds), so a job keeps
the same TTL whichever process wrote its final state.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from hyv.service.idempotency import IdempotencyKeys
from hyv.service.job_cancels import CancelRequests
from hyv.service.job_claims import JobClaims
from hyv.service.job_events import JobEvents
from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_records import JobRecords, record_ttl_seconds
from hyv.service.settings import Settings, get_settings
from hyv.service.worker_registry import WorkerRegistry


@dataclass(frozen=True)
class JobStore:
    redis: Redis
    keys: JobKeys
    jobs: JobRecords
    claims: JobClaims
    cancels: CancelRequests
    idempotency: IdempotencyKeys
    workers: WorkerRegistry
    events: JobEvents

    @classmethod
    def connect(
        cls, redis_client: Redis, settings: Settings | None = None, keys: JobKeys = DEFAULT_KEYS
    ) -> JobStore:
        """The store on this client; `settings`: the process's (get_settings()) when not given."""
        ttl = record_ttl_seconds(settings or get_settings())
        jobs = JobRecords(redis_client, ttl, keys)
        return cls(
            redis=redis_client,
            keys=keys,
            jobs=jobs,
            claims=JobClaims(redis_client, ttl, keys),
            cancels=CancelRequests(jobs, keys),
            idempotency=IdempotencyKeys(redis_client, keys),
            workers=WorkerRegistry(redis_client, keys),
            events=JobEvents(redis_client, keys),
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> JobStore:
        return cls.connect(Redis.from_url(url), settings)
