"""Job state in Redis: what the API answers from and what the workers write (not Celery's results).

One hash per job (`hyv:job:{id}`, every field JSON-encoded, plus a `version` counter) and a few
indexes kept in step by Lua scripts, so every status change is atomic with its indexes:

    hyv:owner:{owner}      zset  the owner's jobs by creation time (listing, `after` cursors)
    hyv:queued:{model}     zset  queued jobs of a model by enqueue time (queue position)
    hyv:active:{owner}     set   the owner's queued + in_progress jobs (the queued-job cap)
    hyv:running            set   in_progress jobs (the worker's reaper looks for dead claims here)
    hyv:cancel:{id}        flag  cancel requested (the worker reads it with its progress writes)
    hyv:claim:{id}         str   the token of the worker running the job, with a lease (PX)
    hyv:idem:{owner}:{h}   str   [job_id, body_hash] of an Idempotency-Key
    hyv:workers:{host}     str   a worker's heartbeat (JSON, TTL): ready with its model loaded
    hyv:events:{id}        pub/sub channel: {"event": ..., "job": {...}} after every write
    hyv:cancel-requests:{host}  pub/sub channel: ids of that worker's jobs to cancel now

Every write bumps `version` and publishes the whole job, so a subscriber that also read a snapshot
can drop events older than what it has already shown.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal

import redis
import redis.asyncio
from pydantic import BaseModel

from hyv.service.job_model import (
    FINISHED,
    JOB_FIELDS,
    JOB_ID_RE,
    Job,
    JobStatus,
    Stage,
    new_job_id,
    owner_for_key,
)
from hyv.service.jobs_lua import CLAIM_LUA, DELETE_IF_LUA, READ_LUA, RENEW_LUA, UPDATE_LUA

__all__ = [  # the record itself lives in hyv.service.job_model
    "FINISHED",
    "JOB_FIELDS",
    "JOB_ID_RE",
    "PREFIX",
    "ClaimResult",
    "Job",
    "JobStatus",
    "JobStore",
    "Stage",
    "new_job_id",
    "owner_for_key",
]

PREFIX = "hyv:"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600

ClaimResult = Literal["claimed", "held", "finished", "missing", "cancel"]


class JobStore:
    """Job records, their indexes and events. Thread-safe (redis-py pools connections)."""

    def __init__(self, redis_client: redis.Redis, record_ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.redis = redis_client
        self.record_ttl_seconds = record_ttl_seconds
        self._update_script = redis_client.register_script(UPDATE_LUA)
        self._claim_script = redis_client.register_script(CLAIM_LUA)
        self._renew_script = redis_client.register_script(RENEW_LUA)
        self._read_script = redis_client.register_script(READ_LUA)
        self._delete_if_script = redis_client.register_script(DELETE_IF_LUA)

    @classmethod
    def from_url(cls, url: str, record_ttl_seconds: int = 7 * 24 * 3600) -> JobStore:
        return cls(redis.Redis.from_url(url), record_ttl_seconds)

    # --- keys ------------------------------------------------------------------------------------

    @staticmethod
    def job_key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    @staticmethod
    def channel(job_id: str) -> str:
        return f"{PREFIX}events:{job_id}"

    @staticmethod
    def cancel_channel(hostname: str) -> str:
        """A worker's channel for cancel requests: the id of a job it runs that was cancelled."""
        return f"{PREFIX}cancel-requests:{hostname}"

    @staticmethod
    def _claim_key(job_id: str) -> str:
        return f"{PREFIX}claim:{job_id}"

    @staticmethod
    def _cancel_key(job_id: str) -> str:
        return f"{PREFIX}cancel:{job_id}"

    @staticmethod
    def _owner_key(owner: str) -> str:
        return f"{PREFIX}owner:{owner}"

    # --- records ---------------------------------------------------------------------------------

    def create(self, job: Job) -> Job:
        """Store a new job (status as given, normally queued) and index it."""
        if not JOB_ID_RE.match(job.id):
            raise ValueError(f"job id must look like video_<24 hex>, got {job.id!r}")
        key = self.job_key(job.id)
        fields = {name: json.dumps(value) for name, value in job.model_dump(mode="json").items()}
        del fields["status"]
        fields["version"] = "0"
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.hset(key, "status", json.dumps(None))
        pipe.zadd(self._owner_key(job.owner), {job.id: time.time()})
        pipe.expire(key, self.record_ttl_seconds)
        pipe.execute()
        created = self._write(job.id, {"status": job.status})
        assert created is not None
        return created

    def get(self, job_id: str) -> Job | None:
        found = self._read(job_id, False)
        return None if found is None else found[0]

    def get_with_position(self, job_id: str) -> tuple[Job, int | None] | None:
        """The job and, while it is queued, its queue position (as `queue_position`), in one round
        trip: what a status read needs."""
        return self._read(job_id, True)

    def get_many_with_position(self, job_ids: list[str]) -> list[tuple[Job, int | None] | None]:
        """get_with_position for several jobs in one round trip (a pipeline of the same script)."""
        found: list[tuple[Job, int | None] | None] = [None] * len(job_ids)
        valid = [(index, job_id) for index, job_id in enumerate(job_ids) if JOB_ID_RE.match(job_id)]
        if not valid:
            return found
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for _, job_id in valid:  # EVALSHA itself: Pipeline would check SCRIPT EXISTS every time
                pipe.evalsha(self._read_script.sha, 1, self.job_key(job_id), PREFIX, job_id, "1")
            replies = pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.redis.script_load(READ_LUA)  # a restarted Redis has forgotten it
                continue
            break
        for (index, _), reply in zip(valid, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            found[index] = _read_result(reply)
        return found

    def _read(self, job_id: str, with_position: bool) -> tuple[Job, int | None] | None:
        if not JOB_ID_RE.match(job_id):
            return None
        result = self._read_script(
            keys=[self.job_key(job_id)], args=[PREFIX, job_id, "1" if with_position else "0"]
        )
        return _read_result(result)

    def update(self, job_id: str, **fields: Any) -> Job | None:
        """Set fields (validated names), bump the version and publish the new state; None if missing."""
        return self._write(job_id, fields)

    def update_progress(self, job_id: str, **fields: Any) -> bool | None:
        """update() for the worker's progress writes: returns whether the job's cancel flag is set
        (read in the same round trip), None if the job is missing."""
        _, job, cancel = self._write_guarded(job_id, fields, [], False)
        return None if job is None else cancel

    def transition(
        self,
        job_id: str,
        allowed: Iterable[JobStatus],
        require_unclaimed: bool = False,
        **fields: Any,
    ) -> tuple[bool, Job | None]:
        """Compare-and-set: write only if the job's status is one of `allowed` (and, if asked, no
        worker holds it). Returns (written, job as it is now)."""
        written, job, _ = self._write_guarded(
            job_id, fields, [JobStatus(s).value for s in allowed], require_unclaimed
        )
        return written, job

    def finish(self, job_id: str, token: str, status: JobStatus, **fields: Any) -> tuple[bool, Job | None]:
        """A run's final write (completed, failed or cancelled), made only while `token` still holds
        the job's claim and the job is queued or in progress: checked and written in one Lua script,
        so a run whose lease lapsed (another worker took the job) can never end it. Returns
        (written, job as it is now); refused, nothing changes (no version bump, no event)."""
        if not JobStatus(status).finished:
            raise ValueError(f"finish() writes a final status, not {status!r}")
        if not token:
            raise ValueError("finish() needs the claim token of the run")
        allowed = [JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value]
        written, job, _ = self._write_guarded(job_id, {**fields, "status": status}, allowed, False, token)
        return written, job

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        pipe = self.redis.pipeline()
        if job is not None:
            pipe.zrem(self._owner_key(job.owner), job_id)
            pipe.zrem(f"{PREFIX}queued:{job.model}", job_id)
            pipe.srem(f"{PREFIX}active:{job.owner}", job_id)
        pipe.srem(f"{PREFIX}running", job_id)
        pipe.delete(self.job_key(job_id), self._cancel_key(job_id), f"{PREFIX}runs:{job_id}")
        pipe.execute()

    def _write(self, job_id: str, fields: dict[str, Any]) -> Job | None:
        return self._write_guarded(job_id, fields, [], False)[1]

    def _write_guarded(
        self,
        job_id: str,
        fields: dict[str, Any],
        allowed: list[str],
        require_unclaimed: bool,
        claim_token: str = "",
    ) -> tuple[bool, Job | None, bool]:
        """(written, the job as it is now or None if missing, whether its cancel flag is set);
        `claim_token`: write only while the job's claim holds exactly that token."""
        unknown = set(fields) - JOB_FIELDS - {"version"} | ({"id", "version"} & set(fields))
        if unknown:
            raise ValueError(f"cannot update job field(s) {sorted(unknown)}")
        if "status" in fields:
            fields["status"] = JobStatus(fields["status"]).value
        encoded = {name: json.dumps(_jsonable(value)) for name, value in fields.items()}
        result = self._update_script(
            keys=[self.job_key(job_id), self._claim_key(job_id), self._cancel_key(job_id)],
            args=[
                json.dumps(encoded),
                PREFIX,
                job_id,
                json.dumps(allowed),
                "1" if require_unclaimed else "0",
                repr(time.time()),
                str(self.record_ttl_seconds),
                self.channel(job_id),
                claim_token,
            ],
        )
        if result is None:
            return False, None, False
        written, document, cancel = result
        return bool(written), Job.model_validate_json(document), bool(cancel)

    # --- listing and counting --------------------------------------------------------------------

    def list_for_owner(
        self, owner: str, after: str | None = None, limit: int = 20, order: Literal["asc", "desc"] = "desc"
    ) -> list[Job]:
        """The owner's jobs by creation time, starting after the job id `after` (a cursor).
        Ask for limit + 1 to learn whether there are more."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        key = self._owner_key(owner)
        desc = order == "desc"
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(key, after) if desc else self.redis.zrank(key, after)
            if rank is None:
                raise ValueError(f"after: no job {after!r} among this caller's jobs")
            start = int(rank) + 1  # type: ignore[arg-type]
        ids = [_text(i) for i in self.redis.zrange(key, start, start + limit - 1, desc=desc)]
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self.job_key(job_id))
        jobs, gone = [], []
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                jobs.append(_decode(raw))
            else:
                gone.append(job_id)  # the record expired: drop it from the index
        if gone:
            self.redis.zrem(key, *gone)
        return jobs

    def queue_position(self, job_id: str, model: str | None = None) -> int | None:
        """1 = the next job a worker of its model takes; None when the job is not queued. Give the
        job's model if known: one round trip instead of two."""
        if model is None:
            stored = self.redis.hget(self.job_key(job_id), "model")
            if stored is None:
                return None
            model = json.loads(stored)
        rank = self.redis.zrank(f"{PREFIX}queued:{model}", job_id)
        return None if rank is None else int(rank) + 1  # type: ignore[arg-type]

    def queue_depth(self, model: str) -> int:
        return int(self.redis.zcard(f"{PREFIX}queued:{model}"))

    def queued_count(self, owner: str) -> int:
        """The owner's unfinished jobs (queued or in progress): what the per-key cap counts."""
        return int(self.redis.scard(f"{PREFIX}active:{owner}"))

    def running_ids(self) -> list[str]:
        return sorted(_text(i) for i in self.redis.smembers(f"{PREFIX}running"))

    # --- cancel ----------------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> Job | None:
        """Flag the job; a queued one becomes cancelled at once (it never runs); for a running one
        the job id is also published on its worker's cancel channel, which sets the worker's local
        cancel event (hyv.service.worker_signals): it stops after the denoising step in flight.
        Returns the job as it is now (None if missing).

        The flag is set before the message is sent, so a worker that subscribes or starts the job
        after the message went out still finds the flag (it reads it once when the job starts, and
        again with its progress writes)."""
        if self.get(job_id) is None:
            return None
        self.redis.set(self._cancel_key(job_id), b"1", ex=self.record_ttl_seconds)
        now = int(time.time())
        _, job = self.transition(
            job_id,
            [JobStatus.QUEUED],
            status=JobStatus.CANCELLED,
            completed_at=now,
            error_code="cancelled",
            error_message="cancelled before it started",
        )
        if job is not None and job.status == JobStatus.IN_PROGRESS and job.worker:
            self.redis.publish(self.cancel_channel(job.worker), job_id)
        return job

    def is_cancel_requested(self, job_id: str) -> bool:
        """Whether the job's cancel flag is set (one round trip)."""
        return bool(self.redis.exists(self._cancel_key(job_id)))

    # --- claims (the worker side of "never run a job twice") ------------------------------------

    def claim(self, job_id: str, token: str, lease_seconds: float) -> ClaimResult:
        """Take the job for `token` unless it is finished or another live worker holds it."""
        result = self._claim_script(
            keys=[self.job_key(job_id), self._claim_key(job_id), self._cancel_key(job_id)],
            args=[token, int(lease_seconds * 1000)],
        )
        return _text(result)  # type: ignore[return-value]

    def renew_claim(self, job_id: str, token: str, lease_seconds: float) -> bool:
        """Extend our lease; False if the claim is no longer ours (then stop working on the job)."""
        return bool(
            self._renew_script(keys=[self._claim_key(job_id)], args=[token, int(lease_seconds * 1000)])
        )

    def release_claim(self, job_id: str, token: str) -> None:
        self._renew_script(keys=[self._claim_key(job_id)], args=[token, 0])

    def log_run(self, job_id: str, event: str, **details: Any) -> None:
        """Append to the job's delivery log (`hyv:runs:{id}`): each delivery's claim outcome and each
        run's end, with worker and time. What operators (and the tests) read to see who ran what."""
        entry = {"event": event, "t": time.time(), **details}
        key = f"{PREFIX}runs:{job_id}"
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(entry))
        pipe.expire(key, self.record_ttl_seconds)
        pipe.execute()

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.redis.lrange(f"{PREFIX}runs:{job_id}", 0, -1)]  # type: ignore[union-attr]

    def drop_claim(self, job_id: str) -> None:
        """Remove whoever's claim (the holder is known dead, e.g. killed at its hard time limit)."""
        self.redis.delete(self._claim_key(job_id))

    def claim_holder(self, job_id: str) -> str | None:
        holder = self.redis.get(self._claim_key(job_id))
        return _text(holder) if holder else None

    # --- idempotency -----------------------------------------------------------------------------

    def _idempotency_key(self, owner: str, key: str) -> str:
        return f"{PREFIX}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def idempotency_get(self, owner: str, key: str) -> tuple[str, str] | None:
        raw = self.redis.get(self._idempotency_key(owner, key))
        if raw is None:
            return None
        job_id, body_hash = json.loads(raw)
        return job_id, body_hash

    def idempotency_set(self, owner: str, key: str, job_id: str, body_hash: str) -> bool:
        """Remember key -> (job, body hash) for 24 h; False if the key was already taken (a race:
        read it again with idempotency_get)."""
        stored = self.redis.set(
            self._idempotency_key(owner, key),
            json.dumps([job_id, body_hash]),
            nx=True,
            ex=IDEMPOTENCY_TTL_SECONDS,
        )
        return bool(stored)

    def idempotency_release(self, owner: str, key: str, job_id: str, body_hash: str) -> bool:
        """Forget key -> job if it still points at that job (its submission failed, so a retry
        with the key must submit again); True if it was released."""
        released = self._delete_if_script(
            keys=[self._idempotency_key(owner, key)], args=[json.dumps([job_id, body_hash])]
        )
        return bool(released)

    # --- workers ---------------------------------------------------------------------------------

    def worker_heartbeat(self, hostname: str, info: dict[str, Any], ttl_seconds: float) -> None:
        self.redis.set(f"{PREFIX}workers:{hostname}", json.dumps(info), px=int(ttl_seconds * 1000))

    def worker_gone(self, hostname: str) -> None:
        self.redis.delete(f"{PREFIX}workers:{hostname}")

    def workers(self, model: str | None = None) -> list[dict[str, Any]]:
        """Live workers (heartbeat not expired), optionally only those serving `model`; each dict
        has hostname, model, queue, ready (model loaded), busy_job (or None), pid, device, ..."""
        keys = list(self.redis.scan_iter(match=f"{PREFIX}workers:*", count=100))
        values = self.redis.mget(keys) if keys else []
        found = [json.loads(v) for v in values if v]
        return [w for w in found if model is None or w.get("model") == model]

    # --- events ----------------------------------------------------------------------------------

    def _async_client(self) -> redis.asyncio.Redis:
        """A fresh asyncio client to the same server (asyncio connections belong to one loop)."""
        kwargs = self.redis.connection_pool.connection_kwargs
        wanted = ("host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout")
        options = {name: kwargs[name] for name in wanted if name in kwargs}
        if "path" in kwargs:
            options["unix_socket_path"] = kwargs["path"]
        return redis.asyncio.Redis(**options)

    def publish_event(self, job_id: str, event: dict[str, Any]) -> None:
        self.redis.publish(self.channel(job_id), json.dumps(event))

    async def events(self, job_id: str, poll_seconds: float = 5.0) -> AsyncIterator[dict[str, Any]]:
        """The job's current state, then each newer state as it is written, ending after a final
        state (completed/failed/cancelled) or when the job disappears. Events are
        {"event": "queued"|"progress"|"completed"|"failed"|"cancelled", "job": {...}}; versions
        only increase (stale or duplicate messages are dropped)."""
        client = self._async_client()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel(job_id))  # before the snapshot: nothing is missed
            raw = await client.hgetall(self.job_key(job_id))  # type: ignore[misc]
            if not raw:
                return
            job = _decode(raw)
            last = job.version
            yield job.event()
            while not job.finished:
                waited = time.monotonic()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                if message is None and time.monotonic() - waited < poll_seconds * 0.9:
                    continue  # the subscribe confirmation (returned as None)
                if message is None:  # quiet: re-read (covers a deleted job or a dropped message)
                    raw = await client.hgetall(self.job_key(job_id))  # type: ignore[misc]
                    if not raw:
                        return
                    event = _decode(raw).event()
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


def _read_result(result: Any) -> tuple[Job, int | None] | None:
    """What READ_LUA returns -> (job, queue position or None); None if the job is missing.
    pydantic parses the JSON document itself: no json.loads per field."""
    if result is None:
        return None
    document, position = result
    return Job.model_validate_json(document), (int(position) if position else None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: Mapping[Any, Any]) -> Job:
    return Job.model_validate({_text(k): json.loads(v) for k, v in raw.items() if v is not None})
