"""The Redis key layout of the job store: the one place key and channel names are spelled.

Python builds every name here, and the Lua scripts (hyv.service.job_scripts) get theirs from
`JobKeys.for_script`, never by spelling their own:

    {prefix}job:{id}              hash  the job: every field JSON-encoded, plus a `version` counter
    {prefix}owner:{owner}         zset  the owner's jobs by creation time (listing, `after` cursors)
    {prefix}queued:{model}        zset  queued jobs of a model by enqueue time (queue position)
    {prefix}active:{owner}        set   the owner's queued + in_progress jobs (the queued-job cap)
    {prefix}running               set   in_progress jobs (the worker's reaper looks for dead claims here)
    {prefix}cancel:{id}           flag  cancel requested (the worker reads it with its progress writes)
    {prefix}claim:{id}            str   the token of the worker running the job, with a lease (PX)
    {prefix}requeue:{id}          str   held while one process requeues the job (PX: a dead holder's lapses)
    {prefix}runs:{id}             list  the job's delivery log (JSON entries)
    {prefix}idem:{owner}:{h}      str   [job_id, body_hash] of an Idempotency-Key (h: its SHA-256)
    {prefix}workers:{host}        str   a worker's heartbeat (JSON, TTL): ready with its model loaded
    {prefix}events:{id}           pub/sub channel: {"event": ..., "job": {...}} after every write
    {prefix}cancel-requests:{host}  pub/sub channel: ids of that worker's jobs to cancel now

The prefix is "hyv:" in every deployment (DEFAULT_KEYS); it is a field so that the layout is data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobKeys:
    prefix: str = "hyv:"

    # Key families keyed by something a script reads from the job itself (its owner or model): a
    # script gets the family's namespace (`..._ns`) and appends that value, as these functions do.
    @property
    def queued_ns(self) -> str:
        return f"{self.prefix}queued:"

    @property
    def active_ns(self) -> str:
        return f"{self.prefix}active:"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def queued(self, model: str) -> str:
        return self.queued_ns + model

    def active(self, owner: str) -> str:
        return self.active_ns + owner

    @property
    def running(self) -> str:
        return f"{self.prefix}running"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}cancel:{job_id}"

    def requeue(self, job_id: str) -> str:
        return f"{self.prefix}requeue:{job_id}"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}claim:{job_id}"

    def runs(self, job_id: str) -> str:
        return f"{self.prefix}runs:{job_id}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}workers:{hostname}"

    @property
    def workers_pattern(self) -> str:
        """SCAN pattern of every worker's heartbeat key."""
        return self.worker("*")

    def events(self, job_id: str) -> str:
        """The job's pub/sub channel: {"event": ..., "job": {...}} after every write."""
        return f"{self.prefix}events:{job_id}"

    def cancel_requests(self, hostname: str) -> str:
        """A worker's pub/sub channel for cancel requests: the id of a job it runs that was cancelled."""
        return f"{self.prefix}cancel-requests:{hostname}"

    def for_script(self, job_id: str) -> dict[str, Any]:
        """Every name a job script may touch for `job_id`, for its JSON argument (`args.keys`)."""
        return {
            "job": self.job(job_id),
            "claim": self.claim(job_id),
            "cancel": self.cancel(job_id),
            "running": self.running,
            "events": self.events(job_id),
            "queued_ns": self.queued_ns,
            "active_ns": self.active_ns,
        }


DEFAULT_KEYS = JobKeys()
