"""Claims on jobs, the worker side of "never run a job twice", and the delivery log of each job.

A claim is a token with a lease (`hyv:claim:{id}`, PX): the worker running the job renews it while it
works; a job whose claim lapsed can be taken by another worker, and the lapsed run can no longer end
it (JobRecords.finish checks the token in the same script as its write). Key layout:
hyv.service.job_keys.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import redis

from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_records import text
from hyv.service.job_scripts import CLAIM_LUA, RENEW_LUA, ScriptCall

ClaimResult = Literal["claimed", "held", "finished", "missing", "cancel"]


class JobClaims:
    """Take, renew, release and inspect a job's claim; append to and read its delivery log."""

    def __init__(
        self,
        redis_client: redis.Redis,
        record_ttl_seconds: int,
        keys: JobKeys = DEFAULT_KEYS,
    ) -> None:
        self.redis = redis_client
        self.record_ttl_seconds = record_ttl_seconds  # the delivery log's TTL
        self.keys = keys
        self._claim_script = ScriptCall(redis_client, CLAIM_LUA)
        self._renew_script = ScriptCall(redis_client, RENEW_LUA)

    def claim(self, job_id: str, token: str, lease_seconds: float) -> ClaimResult:
        """Take the job for `token` unless it is finished or another live worker holds it."""
        result = self._claim_script(
            keys=self.keys.for_script(job_id), token=token, lease_ms=int(lease_seconds * 1000)
        )
        return text(result)  # type: ignore[return-value]

    def renew(self, job_id: str, token: str, lease_seconds: float) -> bool:
        """Extend our lease; False if the claim is no longer ours (then stop working on the job)."""
        return bool(self._renew(job_id, token, int(lease_seconds * 1000)))

    def release(self, job_id: str, token: str) -> None:
        """Give the claim up, if `token` still holds it."""
        self._renew(job_id, token, 0)

    def _renew(self, job_id: str, token: str, lease_ms: int) -> Any:
        return self._renew_script(keys={"claim": self.keys.claim(job_id)}, token=token, lease_ms=lease_ms)

    def drop(self, job_id: str) -> None:
        """Remove whoever's claim (the holder is known dead, e.g. killed at its hard time limit)."""
        self.redis.delete(self.keys.claim(job_id))

    def holder(self, job_id: str) -> str | None:
        holder = self.redis.get(self.keys.claim(job_id))
        return text(holder) if holder else None

    # --- the delivery log ------------------------------------------------------------------------

    def log_run(self, job_id: str, event: str, **details: Any) -> None:
        """Append to the job's delivery log (`hyv:runs:{id}`): each delivery's claim outcome and each
        run's end, with worker and time. What operators (and the tests) read to see who ran what."""
        entry = {"event": event, "t": time.time(), **details}
        key = self.keys.runs(job_id)
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(entry))
        pipe.expire(key, self.record_ttl_seconds)
        pipe.execute()

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.redis.lrange(self.keys.runs(job_id), 0, -1)]  # type: ignore[union-attr]
