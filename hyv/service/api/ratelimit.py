"""Per-key submission limits, kept in Redis so every API process shares them.

- `rate_limit_per_minute`: job submissions (POST /v1/videos) per key per clock minute (a fixed
  window; 0 turns it off). Reads (status polls, content, events) are not limited: a client polling
  its job must never be locked out of it.
- `max_queued_jobs_per_key`: jobs a key may have waiting in the queue at once.
Both answer 429 with Retry-After.
"""

from __future__ import annotations

import time
from typing import Any

from hyv.service.api.errors import TooManyRequestsError

RATE_KEY = "hyv:ratelimit:{owner}:{window}"
WINDOW_SECONDS = 60
QUEUE_FULL_RETRY_SECONDS = 5


class SubmissionLimiter:
    def __init__(self, redis: Any, per_minute: int, max_queued: int) -> None:
        self.redis = redis
        self.per_minute = per_minute
        self.max_queued = max_queued

    def check_rate(self, owner: str) -> None:
        """Count one submission; raise 429 if it is over the key's limit for this minute."""
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = RATE_KEY.format(owner=owner, window=window)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        count = int(pipe.execute()[0])
        if count > self.per_minute:
            retry_after = int((window + 1) * WINDOW_SECONDS - now) + 1
            raise TooManyRequestsError(
                f"rate limit reached: {self.per_minute} video submissions per minute for this API key; "
                f"retry in {retry_after} s",
                retry_after,
            )

    def check_queue(self, owner: str, queued: int) -> None:
        if queued >= self.max_queued:
            raise TooManyRequestsError(
                f"this API key already has {queued} queued jobs (the limit is {self.max_queued}); "
                "wait for some to start or cancel them",
                QUEUE_FULL_RETRY_SECONDS,
                code="too_many_queued_jobs",
            )
