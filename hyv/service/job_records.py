"""Job records in Redis and their indexes: what the API answers from and what the workers write (not
Celery's results). Key layout: hyv.service.job_keys.

One hash per job (every field JSON-encoded, plus a `version` counter) and a few indexes (the owner's
jobs, a model's queue, the owner's active jobs, the running set) kept in step by a Lua script
(hyv.service.job_scripts.UPDATE_LUA), so every status change is atomic with its indexes. Every write
bumps `version` and publishes the whole job on the job's events channel, so a subscriber that also
read a snapshot can drop events older than what it has already shown (hyv.service.job_events).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import redis
from pydantic import BaseModel

from hyv.service.job_keys import DEFAULT_KEYS, JobKeys
from hyv.service.job_model import JOB_FIELDS, JOB_ID_RE, Job, JobStatus
from hyv.service.job_scripts import READ_LUA, UPDATE_LUA, ScriptCall, encode_args
from hyv.service.settings import Settings


def record_ttl_seconds(settings: Settings) -> int:
    """How long a job's record, cancel flag and delivery log are kept (counted from its creation,
    and again from its final write): twice the video's `job_ttl_seconds`, so a client asking for a
    video whose file expired learns that it expired (`video_expired`) rather than that it never
    existed. Every process that writes job records takes its TTL from here (JobStore)."""
    return settings.job_ttl_seconds * 2


class ActiveJobLimitError(Exception):
    """An owner already has `limit` unfinished jobs: a new one was not created."""

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(f"{owner} already has {limit} unfinished jobs")
        self.owner = owner
        self.limit = limit


class JobRecords:
    """Job records, their writes (each publishes the new state) and the listing and counting
    indexes. Thread-safe (redis-py pools connections)."""

    def __init__(
        self, redis_client: redis.Redis, record_ttl_seconds: int, keys: JobKeys = DEFAULT_KEYS
    ) -> None:
        self.redis = redis_client
        self.record_ttl_seconds = record_ttl_seconds  # record_ttl_seconds(settings)
        self.keys = keys
        self._update_script = ScriptCall(redis_client, UPDATE_LUA)
        self._read_script = ScriptCall(redis_client, READ_LUA)

    # --- records ---------------------------------------------------------------------------------

    def create(self, job: Job, max_active: int | None = None) -> Job:
        """Store a new job (status as given, normally queued) and index it. `max_active`: only if
        its owner has fewer unfinished jobs than that, checked and counted in the script that makes
        the job queued, so API processes racing for the owner's last slot admit one job between
        them; ActiveJobLimitError otherwise (nothing is left behind)."""
        if not JOB_ID_RE.match(job.id):
            raise ValueError(f"job id must look like video_<24 hex>, got {job.id!r}")
        key = self.keys.job(job.id)
        fields = {name: json.dumps(value) for name, value in job.model_dump(mode="json").items()}
        del fields["status"]
        fields["version"] = "0"
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.hset(key, "status", json.dumps(None))
        pipe.zadd(self.keys.owner(job.owner), {job.id: time.time()})
        pipe.expire(key, self.record_ttl_seconds)
        pipe.execute()
        written, created, _ = self._write_guarded(
            job.id, {"status": job.status}, [], False, max_active=max_active
        )
        if not written:  # the hash and the owner's index entry made above go again
            pipe = self.redis.pipeline()
            pipe.zrem(self.keys.owner(job.owner), job.id)
            pipe.delete(key)
            pipe.execute()
            assert max_active is not None  # the only guard a new job can meet
            raise ActiveJobLimitError(job.owner, max_active)
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
                pipe.evalsha(self._read_script.sha, 0, encode_args(**self._read_args(job_id, True)))
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
        return _read_result(self._read_script(**self._read_args(job_id, with_position)))

    def _read_args(self, job_id: str, with_position: bool) -> dict[str, Any]:
        return {"keys": self.keys.for_script(job_id), "id": job_id, "with_position": with_position}

    def update(self, job_id: str, **fields: Any) -> Job | None:
        """Set fields (validated names), bump the version and publish the new state; None if missing."""
        return self._write(job_id, fields)

    def update_progress(self, job_id: str, claim_token: str, **fields: Any) -> tuple[bool, bool]:
        """A running job's progress write, made only while `claim_token` holds the job's claim and
        the job is in progress: a run that lost its claim (its lease lapsed, another worker owns the
        job) can never write into the new owner's record. Returns (written, whether the job's cancel
        flag is set: read in the same round trip); (False, False) if the job is missing."""
        if not claim_token:
            raise ValueError("update_progress() needs the claim token of the run")
        written, job, cancel = self._write_guarded(
            job_id, fields, [JobStatus.IN_PROGRESS.value], False, claim_token
        )
        return written, job is not None and cancel

    def fail_dead_run(self, job_id: str, task_id: str, **fields: Any) -> tuple[bool, Job | None]:
        """Fail a job whose run was killed (its pool process is gone: the hard time limit), only if
        the claim still holds that run's token (tokens end with ":" + the Celery task id) and the
        job is in progress; the claim goes with the write. A job requeued or taken by another run
        since is left alone. Returns (written, the job as it is now)."""
        fields = {**fields, "status": JobStatus.FAILED}
        written, job, _ = self._write_guarded(
            job_id, fields, [JobStatus.IN_PROGRESS.value], False, claim_suffix=f":{task_id}", drop_claim=True
        )
        return written, job

    def transition(
        self,
        job_id: str,
        allowed: Iterable[JobStatus],
        require_unclaimed: bool = False,
        claim_token: str = "",
        queue_front: bool = False,
        **fields: Any,
    ) -> tuple[bool, Job | None]:
        """Compare-and-set: write only if the job's status is one of `allowed` (and, if asked, no
        worker holds it, or only while `claim_token` holds its claim). `queue_front`: a job made
        queued goes ahead of every job queued now (its queue position 1). Returns (written, job as it
        is now)."""
        written, job, _ = self._write_guarded(
            job_id,
            fields,
            [JobStatus(s).value for s in allowed],
            require_unclaimed,
            claim_token,
            queue_front=queue_front,
        )
        return written, job

    def finish(self, job_id: str, token: str, status: JobStatus, **fields: Any) -> tuple[bool, Job | None]:
        """A run's final write (completed, failed or cancelled), made only while `token` still holds
        the job's claim (hyv.service.job_claims) and the job is queued or in progress: checked and
        written in one Lua script, so a run whose lease lapsed (another worker took the job) can never
        end it. Returns (written, job as it is now); refused, nothing changes (no version bump, no
        event)."""
        if not JobStatus(status).finished:
            raise ValueError(f"finish() writes a final status, not {status!r}")
        if not token:
            raise ValueError("finish() needs the claim token of the run")
        allowed = [JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value]
        written, job, _ = self._write_guarded(job_id, {**fields, "status": status}, allowed, False, token)
        return written, job

    def delete(self, job_id: str) -> None:
        """The job, its indexes, its cancel flag and its delivery log."""
        job = self.get(job_id)
        keys = self.keys
        pipe = self.redis.pipeline()
        if job is not None:
            pipe.zrem(keys.owner(job.owner), job_id)
            pipe.zrem(keys.queued(job.model), job_id)
            pipe.srem(keys.active(job.owner), job_id)
        pipe.srem(keys.running, job_id)
        pipe.delete(keys.job(job_id), keys.cancel(job_id), keys.runs(job_id))
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
        claim_suffix: str = "",
        drop_claim: bool = False,
        max_active: int | None = None,
        queue_front: bool = False,
    ) -> tuple[bool, Job | None, bool]:
        """(written, the job as it is now or None if missing, whether its cancel flag is set);
        `claim_token`: write only while the job's claim holds exactly that token; `claim_suffix`:
        only while the claim's token ends with it; `drop_claim`: delete the claim with the write."""
        unknown = set(fields) - JOB_FIELDS - {"version"} | ({"id", "version"} & set(fields))
        if unknown:
            raise ValueError(f"cannot update job field(s) {sorted(unknown)}")
        if "status" in fields:
            fields["status"] = JobStatus(fields["status"]).value
        args: dict[str, Any] = {
            "keys": self.keys.for_script(job_id),
            "id": job_id,
            "fields": {name: json.dumps(_jsonable(value)) for name, value in fields.items()},
            "allowed": allowed,
            "require_unclaimed": require_unclaimed,
            "queue_score": repr(time.time()),  # a string: a JSON number would lose digits in Lua
            "record_ttl_s": self.record_ttl_seconds,
        }
        if claim_token:
            args["claim_token"] = claim_token
        if claim_suffix:
            args["claim_suffix"] = claim_suffix
        if drop_claim:
            args["drop_claim"] = True
        if max_active is not None:
            args["max_active"] = max_active
        if queue_front:
            args["queue_front"] = True
        result = self._update_script(**args)
        if result is None:
            return False, None, False
        written, document, cancel = result
        if not written and json.loads(document).get("status") is None:
            return False, None, bool(cancel)  # refused before it ever had a status (create's cap)
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
        key = self.keys.owner(owner)
        desc = order == "desc"
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(key, after) if desc else self.redis.zrank(key, after)
            if rank is None:
                raise ValueError(f"after: no job {after!r} among this caller's jobs")
            start = int(rank) + 1  # type: ignore[arg-type]
        ids = [text(i) for i in self.redis.zrange(key, start, start + limit - 1, desc=desc)]
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self.keys.job(job_id))
        jobs, gone = [], []
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                jobs.append(job_from_hash(raw))
            else:
                gone.append(job_id)  # the record expired: drop it from the index
        if gone:
            self.redis.zrem(key, *gone)
        return jobs

    def queue_position(self, job_id: str, model: str | None = None) -> int | None:
        """1 = the next job a worker of its model takes; None when the job is not queued. Give the
        job's model if known: one round trip instead of two."""
        if model is None:
            stored = self.redis.hget(self.keys.job(job_id), "model")
            if stored is None:
                return None
            model = json.loads(stored)
        rank = self.redis.zrank(self.keys.queued(model), job_id)  # type: ignore[arg-type]
        return None if rank is None else int(rank) + 1  # type: ignore[arg-type]

    def queue_depth(self, model: str) -> int:
        return int(self.redis.zcard(self.keys.queued(model)))

    def queued_count(self, owner: str) -> int:
        """The owner's unfinished jobs (queued or in progress): what the per-key cap counts."""
        return int(self.redis.scard(self.keys.active(owner)))

    def running_ids(self) -> list[str]:
        return sorted(text(i) for i in self.redis.smembers(self.keys.running))


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


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def job_from_hash(raw: Mapping[Any, Any]) -> Job:
    """A job from its hash as HGETALL returns it (every value JSON-encoded)."""
    return Job.model_validate({text(k): json.loads(v) for k, v in raw.items() if v is not None})
