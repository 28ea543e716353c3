"""A job's events: every write to a job (hyv.service.job_records) publishes {"event": ..., "job":
{...}} on its channel (`hyv:events:{id}`; layout: hyv.service.job_keys). `JobEvents.stream` is what
the SSE route follows (asyncio)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio

from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_model import Job
from hyv.service.job_records import job_from_hash

# The TLS options of a sync client (from a rediss:// URL's query) that the asyncio client takes too.
_ASYNC_SSL_OPTIONS = (
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
    "ssl_password",
)


class JobEvents:
    """Publish to and follow a job's channel."""

    def __init__(self, redis_client: redis.Redis, keys: JobKeys = DEFAULT_KEYS) -> None:
        self.redis = redis_client
        self.keys = keys

    def channel(self, job_id: str) -> str:
        return self.keys.events(job_id)

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        self.redis.publish(self.channel(job_id), json.dumps(event))

    def _async_client(self) -> redis.asyncio.Redis:
        """A fresh asyncio client to the same server (asyncio connections belong to one loop)."""
        kwargs = self.redis.connection_pool.connection_kwargs
        wanted = ("host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout")
        options = {name: kwargs[name] for name in wanted if name in kwargs}
        if "path" in kwargs:
            options["unix_socket_path"] = kwargs["path"]
        if issubclass(self.redis.connection_pool.connection_class, redis.SSLConnection):  # rediss://
            options["ssl"] = True
            options.update({name: kwargs[name] for name in _ASYNC_SSL_OPTIONS if name in kwargs})
        return redis.asyncio.Redis(**options)

    async def stream(self, job_id: str, poll_seconds: float = 5.0) -> AsyncIterator[dict[str, Any]]:
        """The job's current state, then each newer state as it is written, ending after a final
        state (completed/failed/cancelled) or when the job disappears. Events are
        {"event": "queued"|"progress"|"completed"|"failed"|"cancelled", "job": {...}}; versions
        only increase (stale or duplicate messages are dropped)."""
        client = self._async_client()
        pubsub = client.pubsub()
        job_key = self.keys.job(job_id)
        try:
            await pubsub.subscribe(self.channel(job_id))  # before the snapshot: nothing is missed
            raw = await client.hgetall(job_key)  # type: ignore[misc]
            if not raw:
                return
            job = job_from_hash(raw)
            last = job.version
            yield job.event()
            while not job.finished:
                waited = time.monotonic()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                if message is None and time.monotonic() - waited < poll_seconds * 0.9:
                    continue  # the subscribe confirmation (returned as None)
                if message is None:  # quiet: re-read (covers a deleted job or a dropped message)
                    raw = await client.hgetall(job_key)  # type: ignore[misc]
                    if not raw:
                        return
                    event = job_from_hash(raw).event()
                else:
                    event = json.loads(message["data"])
                if event["job"]["version"] <= last:
                    continue
                job = Job.model_validate(event["job"])
                last = job.version
                yield event
        finally:
            await pubsub.aclose()
            await client.aclose()
