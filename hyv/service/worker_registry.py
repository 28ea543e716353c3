"""The worker registry: each worker's heartbeat (`hyv:workers:{host}`, JSON with a TTL; layout:
hyv.service.job_keys). A worker is live while its heartbeat has not expired."""

from __future__ import annotations

import json
from typing import Any

import redis

from hyv.service.job_keys import DEFAULT_KEYS, JobKeys


class WorkerRegistry:
    """Heartbeats written by the workers, read by /readyz, the metrics and the launcher."""

    def __init__(self, redis_client: redis.Redis, keys: JobKeys = DEFAULT_KEYS) -> None:
        self.redis = redis_client
        self.keys = keys

    def heartbeat(self, hostname: str, info: dict[str, Any], ttl_seconds: float) -> None:
        self.redis.set(self.keys.worker(hostname), json.dumps(info), px=int(ttl_seconds * 1000))

    def gone(self, hostname: str) -> None:
        self.redis.delete(self.keys.worker(hostname))

    def live(self, model: str | None = None) -> list[dict[str, Any]]:
        """Live workers (heartbeat not expired), optionally only those serving `model`; each dict
        has hostname, model, queue, ready (model loaded), busy_job (or None), pid, device, ..."""
        keys = list(self.redis.scan_iter(match=self.keys.workers_pattern, count=100))
        values = self.redis.mget(keys) if keys else []
        found = [json.loads(v) for v in values if v]  # type: ignore[union-attr]
        return [w for w in found if model is None or model in serves(w)]


def serves(worker: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A heartbeat's models: name -> {"ready", "load_error"} (one worker may hold several)."""
    models = worker.get("models")
    if isinstance(models, dict):
        return models
    return {
        str(worker.get("model")): {"ready": bool(worker.get("ready")), "load_error": worker.get("load_error")}
    }


def ready_for(worker: dict[str, Any], model: str) -> bool:
    """Whether the worker has `model` loaded."""
    return bool(serves(worker).get(model, {}).get("ready"))
