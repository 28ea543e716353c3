"""A job's Celery message moved to the front of its queue: what a requeued job gets, so that it runs
before the jobs submitted after it started (hyv.service.job_runner.requeue_job).

kombu's Redis transport keeps a queue's waiting messages in lists, one per priority step
(hyv.service.queue_reaper.broker_lists); a producer LPUSHes onto the head and the workers BRPOP from
the tail, taking the lists in step order. Every message we send has the default priority (step 0,
the list named after the queue, the first one taken), so the tail of that list is the front of the
queue: the message naming the job is moved there, in one script. A message a worker took meanwhile
is already running: nothing to move.
"""

from __future__ import annotations

import redis

from hyv.service.queue_reaper import broker_lists

# KEYS: the queue's lists, step 0 first; ARGV[1]: the job id. Messages name their job in their
# `argsrepr` header (plain JSON text); the newest are at the head, where a just-sent one is.
MOVE_TO_FRONT_LUA = """
for _, list in ipairs(KEYS) do
  local messages = redis.call('LRANGE', list, 0, -1)
  for _, message in ipairs(messages) do
    if string.find(message, ARGV[1], 1, true) then
      redis.call('LREM', list, 1, message)
      redis.call('RPUSH', KEYS[1], message)
      return 1
    end
  end
end
return 0
"""


def move_to_front(client: redis.Redis, queue: str, job_id: str) -> bool:
    """Move the waiting message that names `job_id` to the front of `queue`; False if none waits."""
    script = client.register_script(MOVE_TO_FRONT_LUA)
    return bool(script(keys=broker_lists(queue), args=[job_id]))
