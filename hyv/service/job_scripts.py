"""The job store's Lua scripts: each changes a job together with its indexes (or reads it) atomically,
in one round trip.

Every script takes ONE argument, a JSON object (`ScriptCall` encodes it; the script starts with
`local args = cjson.decode(ARGV[1])`), documented above each script. Key and channel names come in it
(`args.keys`, from hyv.service.job_keys.JobKeys.for_script): no script spells a key. The status and
event names are rendered into the scripts from hyv.service.job_model (`STATUS`, `FINISHED`, `EVENT`)
when this module is imported.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from hyv.service.job_model import EVENT_NAMES, FINISHED, JobStatus


def _lua_table(entries: dict[str, Any]) -> str:
    # json.dumps of these ASCII names (and of true) is valid Lua too.
    return "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in entries.items()) + "}"


# Lua: the statuses by name (STATUS.QUEUED == "queued"...), the final ones as a set, the event name
# of each status (Job.event()'s: "progress" while in progress), and the script's JSON argument.
STATUS_LUA = (
    f"local STATUS = {_lua_table({s.name: s.value for s in JobStatus})}\n"
    f"local FINISHED = {_lua_table({s.value: True for s in sorted(FINISHED)})}\n"
    f"local EVENT = {_lua_table({s.value: name for s, name in EVENT_NAMES.items()})}\n"
    "local args = cjson.decode(ARGV[1])\n"
)

# Lua: the job hash as ONE JSON object. Its values are JSON already, so they are spliced in as they
# are and the client parses a single document (no json.loads per field); also returns the status.
SNAPSHOT_LUA = """
local function snapshot(key)
  local flat = redis.call('HGETALL', key)
  local parts, status = {}, nil
  for i = 1, #flat, 2 do
    parts[#parts + 1] = '"' .. flat[i] .. '":' .. flat[i + 1]
    if flat[i] == 'status' then status = cjson.decode(flat[i + 1]) end
  end
  return '{' .. table.concat(parts, ',') .. '}', status
end
"""

# args: keys (JobKeys.for_script), id (the job id), fields (object: field -> JSON-encoded value),
# allowed (list of current statuses the write is allowed from; [] = any), require_unclaimed (true =
# refuse while a claim exists), claim_token (optional: refuse unless the claim holds exactly this
# token, i.e. the writer still owns the job), claim_suffix (optional: refuse unless the claim's token
# ends with it: a run known by its Celery task id, see JobRecords.fail_dead_run), drop_claim (true =
# delete the claim with the write), max_active (optional: refuse unless the owner has fewer unfinished
# jobs than this, counted and taken in this script: the per-key cap across every API process),
# queue_score (string: the enqueue time when the job
# becomes queued), queue_front (true = queued ahead of every job queued now: a requeued job),
# record_ttl_s (the job's TTL once finished).
# Returns nil if the job is missing, {0, job JSON, cancel flag} if a guard refused, {1, job JSON,
# cancel flag} after the write, which also publishes {"event": ..., "job": ...} (Job.event()'s shape)
# on the job's channel: one round trip per write, events published in version order, and the cancel
# flag read with it (see JobRecords.update_progress).
UPDATE_LUA = (
    STATUS_LUA
    + SNAPSHOT_LUA
    + """
local k = args.keys
if redis.call('EXISTS', k.job) == 0 then return nil end
local function refused() return {0, (snapshot(k.job)), redis.call('EXISTS', k.cancel)} end
local current = cjson.decode(redis.call('HGET', k.job, 'status'))
local allowed = args.allowed or {}
if #allowed > 0 then
  local ok = false
  for _, s in ipairs(allowed) do if s == current then ok = true end end
  if not ok then return refused() end
end
if args.require_unclaimed and redis.call('EXISTS', k.claim) == 1 then return refused() end
if args.claim_token and redis.call('GET', k.claim) ~= args.claim_token then return refused() end
if args.claim_suffix then
  local holder = redis.call('GET', k.claim)
  if not holder or string.sub(holder, -#args.claim_suffix) ~= args.claim_suffix then return refused() end
end
if args.max_active then
  local active = k.active_ns .. cjson.decode(redis.call('HGET', k.job, 'owner'))
  if redis.call('SISMEMBER', active, args.id) == 0 and redis.call('SCARD', active) >= args.max_active then
    return refused()
  end
end
if args.drop_claim then redis.call('DEL', k.claim) end
local fields = args.fields
for name, value in pairs(fields) do redis.call('HSET', k.job, name, value) end
redis.call('HINCRBY', k.job, 'version', 1)
if fields['status'] then
  local s = cjson.decode(fields['status'])
  local queued = k.queued_ns .. cjson.decode(redis.call('HGET', k.job, 'model'))
  local active = k.active_ns .. cjson.decode(redis.call('HGET', k.job, 'owner'))
  if s == STATUS.QUEUED then
    local score = args.queue_score
    if args.queue_front then
      local first = redis.call('ZRANGE', queued, 0, 0, 'WITHSCORES')[2]
      if first and tonumber(first) <= tonumber(score) then score = tostring(tonumber(first) - 1) end
    end
    redis.call('ZADD', queued, 'NX', score, args.id)
  else
    redis.call('ZREM', queued, args.id)
  end
  if s == STATUS.IN_PROGRESS then
    redis.call('SADD', k.running, args.id)
  else
    redis.call('SREM', k.running, args.id)
  end
  if s == STATUS.QUEUED or s == STATUS.IN_PROGRESS then
    redis.call('SADD', active, args.id)
  else
    redis.call('SREM', active, args.id)
  end
end
local document, status = snapshot(k.job)
if FINISHED[status] then redis.call('EXPIRE', k.job, args.record_ttl_s) end
if type(status) == 'string' then
  redis.call('PUBLISH', k.events, '{"event":"' .. (EVENT[status] or status) .. '","job":' .. document .. '}')
end
return {1, document, redis.call('EXISTS', k.cancel)}
"""
)

# args: keys (JobKeys.for_script), token, lease_ms. Takes the claim unless the job is finished or
# another token holds it: 'missing' | 'finished' | 'held' | 'cancel' (claimed, cancel flag set) |
# 'claimed'.
CLAIM_LUA = (
    STATUS_LUA
    + """
local k = args.keys
if redis.call('EXISTS', k.job) == 0 then return 'missing' end
local s = cjson.decode(redis.call('HGET', k.job, 'status'))
if FINISHED[s] then return 'finished' end
local holder = redis.call('GET', k.claim)
if holder and holder ~= args.token then return 'held' end
redis.call('SET', k.claim, args.token, 'PX', args.lease_ms)
if redis.call('EXISTS', k.cancel) == 1 then return 'cancel' end
return 'claimed'
"""
)

# args: keys (with `claim`), token, lease_ms (0 = release). Returns 1 if the claim is (still) ours.
RENEW_LUA = """
local args = cjson.decode(ARGV[1])
if redis.call('GET', args.keys.claim) ~= args.token then return 0 end
if args.lease_ms > 0 then
  redis.call('PEXPIRE', args.keys.claim, args.lease_ms)
else
  redis.call('DEL', args.keys.claim)
end
return 1
"""

# args: keys (JobKeys.for_script), id, with_position (true = also the queue position). A status read
# in one round trip: the job's JSON and the 1-based queue position of a queued job.
# Returns nil if the job is missing, else {job JSON, position or false}.
READ_LUA = (
    STATUS_LUA
    + SNAPSHOT_LUA
    + """
local k = args.keys
if redis.call('EXISTS', k.job) == 0 then return nil end
local document, status = snapshot(k.job)
local position = false
if args.with_position and status == STATUS.QUEUED then
  local model = cjson.decode(redis.call('HGET', k.job, 'model'))
  local rank = redis.call('ZRANK', k.queued_ns .. model, args.id)
  if rank then position = rank + 1 end
end
return {document, position}
"""
)

# args: key, value. Deletes the key only if it still holds that value (an Idempotency-Key released
# by the request that claimed it, never one claimed since).
DELETE_IF_LUA = """
local args = cjson.decode(ARGV[1])
if redis.call('GET', args.key) == args.value then return redis.call('DEL', args.key) end
return 0
"""


class ScriptCall:
    """A registered script called with named arguments: `script(token="t", lease_ms=5)` sends them
    as the one JSON argument."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.source = source
        self._script = client.register_script(source)

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    def __call__(self, **args: Any) -> Any:
        return self._script(keys=[], args=[encode_args(**args)])


def encode_args(**args: Any) -> str:
    """The one ARGV of a script call (what a pipeline's EVALSHA sends too)."""
    return json.dumps(args)
