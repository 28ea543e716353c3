"""The Lua scripts of hyv.service.jobs.JobStore: each changes a job together with its indexes (or reads
it) atomically, in one round trip. Keys and arguments are documented above each script; the key
layout is in hyv.service.jobs's docstring.
"""

from __future__ import annotations

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

# KEYS: job hash, claim key, cancel key. ARGV: fields (JSON object of JSON-encoded values), prefix,
# job id, allowed current statuses (JSON list, [] = any), "1" = refuse while a claim exists, queue
# score, record TTL seconds (set once the job is finished), event channel, claim token ("" = none:
# else refuse unless the claim key holds exactly this token, i.e. the writer still owns the job).
# Returns nil if the job is missing, {0, job JSON, cancel flag} if a guard refused, {1, job JSON,
# cancel flag} after the write, which also publishes {"event": ..., "job": ...} (Job.event()'s shape)
# on the channel: one round trip per write, events published in version order, and the cancel flag
# read with it (see JobStore.update_progress).
UPDATE_LUA = (
    SNAPSHOT_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local current = cjson.decode(redis.call('HGET', KEYS[1], 'status'))
local allowed = cjson.decode(ARGV[4])
if #allowed > 0 then
  local ok = false
  for _, s in ipairs(allowed) do if s == current then ok = true end end
  if not ok then return {0, (snapshot(KEYS[1])), redis.call('EXISTS', KEYS[3])} end
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, (snapshot(KEYS[1])), redis.call('EXISTS', KEYS[3])}
end
if ARGV[9] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[9] then
  return {0, (snapshot(KEYS[1])), redis.call('EXISTS', KEYS[3])}
end
local fields = cjson.decode(ARGV[1])
local prefix, id = ARGV[2], ARGV[3]
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
if fields['status'] then
  local s = cjson.decode(fields['status'])
  local owner = cjson.decode(redis.call('HGET', KEYS[1], 'owner'))
  local model = cjson.decode(redis.call('HGET', KEYS[1], 'model'))
  if s == 'queued' then
    redis.call('ZADD', prefix .. 'queued:' .. model, 'NX', ARGV[6], id)
  else
    redis.call('ZREM', prefix .. 'queued:' .. model, id)
  end
  if s == 'in_progress' then
    redis.call('SADD', prefix .. 'running', id)
  else
    redis.call('SREM', prefix .. 'running', id)
  end
  if s == 'queued' or s == 'in_progress' then
    redis.call('SADD', prefix .. 'active:' .. owner, id)
  else
    redis.call('SREM', prefix .. 'active:' .. owner, id)
  end
end
local document, status = snapshot(KEYS[1])
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
if type(status) == 'string' then
  local name = status
  if status == 'in_progress' then name = 'progress' end
  redis.call('PUBLISH', ARGV[8], '{"event":"' .. name .. '","job":' .. document .. '}')
end
return {1, document, redis.call('EXISTS', KEYS[3])}
"""
)

# KEYS: job hash, claim key, cancel key. ARGV: token, lease ms.
CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local s = cjson.decode(redis.call('HGET', KEYS[1], 'status'))
if s == 'completed' or s == 'failed' or s == 'cancelled' then return 'finished' end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'held' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return 'cancel' end
return 'claimed'
"""

# KEYS: claim key. ARGV: token, lease ms (0 = release). Returns 1 if the claim is (still) ours.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: job hash. ARGV: prefix, job id, "1" = also the queue position. A status read in one round
# trip: the job's JSON and the 1-based queue position of a queued job.
# Returns nil if the job is missing, else {job JSON, position or false}.
READ_LUA = (
    SNAPSHOT_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local document, status = snapshot(KEYS[1])
local position = false
if ARGV[3] == '1' and status == 'queued' then
  local model = cjson.decode(redis.call('HGET', KEYS[1], 'model'))
  local rank = redis.call('ZRANK', ARGV[1] .. 'queued:' .. model, ARGV[2])
  if rank then position = rank + 1 end
end
return {document, position}
"""
)

# KEYS: a key. ARGV: the value it must hold. Deletes the key only if it still holds that value
# (an Idempotency-Key released by the request that claimed it, never one claimed since).
DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
