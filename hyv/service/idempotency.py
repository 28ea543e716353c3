"""Idempotency-Key records: key -> [job id, request body hash] for 24 h, per owner
(`hyv:idem:{owner}:{sha256 of the key}`; layout: hyv.service.job_keys)."""

from __future__ import annotations

import json

import redis

from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_scripts import DELETE_IF_LUA, ScriptCall

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class IdempotencyKeys:
    """What POST /v1/videos remembers of each Idempotency-Key."""

    def __init__(self, redis_client: redis.Redis, keys: JobKeys = DEFAULT_KEYS) -> None:
        self.redis = redis_client
        self.keys = keys
        self._delete_if_script = ScriptCall(redis_client, DELETE_IF_LUA)

    def get(self, owner: str, key: str) -> tuple[str, str] | None:
        """(job id, body hash) the key points at, or None."""
        raw = self.redis.get(self.keys.idempotency(owner, key))
        if raw is None:
            return None
        job_id, body_hash = json.loads(raw)  # type: ignore[arg-type]
        return job_id, body_hash

    def set(self, owner: str, key: str, job_id: str, body_hash: str) -> bool:
        """Remember key -> (job, body hash) for 24 h; False if the key was already taken (a race:
        read it again with get)."""
        stored = self.redis.set(
            self.keys.idempotency(owner, key),
            json.dumps([job_id, body_hash]),
            nx=True,
            ex=IDEMPOTENCY_TTL_SECONDS,
        )
        return bool(stored)

    def release(self, owner: str, key: str, job_id: str, body_hash: str) -> bool:
        """Forget key -> job if it still points at that job (its submission failed, so a retry
        with the key must submit again); True if it was released."""
        released = self._delete_if_script(
            key=self.keys.idempotency(owner, key), value=json.dumps([job_id, body_hash])
        )
        return bool(released)
