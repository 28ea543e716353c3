"""Structured JSON logs: one object per line, with the job id on every line logged during a job.

configure_logging()                 # once per process
with job_context(job_id): ...       # every record inside carries "job_id"
logger.info("enqueued", extra={"job_id": job.id})   # or name it explicitly
repeats.log(logger, logging.WARNING, "lost ...")    # a warning that repeats: once a minute at most
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass

from hyv.service.settings import get_settings

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("hyv_job_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        if job_id:
            entry["job_id"] = job_id
        for key, value in record.__dict__.items():
            if (
                key not in _STANDARD
                and key not in entry
                and key != "color_message"
                and not key.startswith("_")
            ):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str | int | None = None) -> None:
    """JSON lines on stderr for the root logger (level: the log_level setting unless given)."""
    level = level or get_settings().log_level
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class RepeatLimiter:
    """Logs a message that repeats at most once per `interval_s`: the first time at once, the
    repeats within the interval only counted, then one summary record when the interval ends
    ("... (suppressed N repeats in the last X s)", with `suppressed=N` on the record). A repeat
    after that starts a new interval. A message is the same when its logger, level, text and job
    id are (one job's repeats never hide another job's).

    A timer thread logs the summary when the interval ends, so the count is not lost when the
    repeats stop; a repeat that finds its interval over logs the summary itself (a forked child,
    which has the dict but not the timer threads, starts afresh)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Interval] = {}

    def log(
        self,
        logger: logging.Logger,
        level: int,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Log `msg % args` unless it repeats one logged less than `interval_s` ago; True if it
        was logged now."""
        if self._pid != os.getpid():
            self._pid, self._lock, self._open = os.getpid(), threading.Lock(), {}
        extra = dict(extra or {})
        job_id = extra.get("job_id") or current_job_id.get()
        if job_id:
            extra["job_id"] = job_id  # the summary is logged from a timer thread, outside the job
        text = msg % args if args else msg
        key = (logger.name, level, text, job_id)
        now = time.monotonic()
        with self._lock:
            ended = self._open.get(key)
            if ended is not None and now < ended.ends:
                ended.suppressed += 1
                return False
            interval = _Interval(logger, level, text, extra, now + self.interval_s)
            interval.timer = threading.Timer(self.interval_s, self._close, (key, interval))
            interval.timer.daemon = True
            self._open[key] = interval
        if ended is not None:
            ended.summarize(self.interval_s)
        logger.log(level, msg, *args, extra=extra)
        interval.timer.start()
        return True

    def flush(self) -> None:
        """End every interval now, logging their summaries (at shutdown, or in tests)."""
        with self._lock:
            open_now = list(self._open.items())
        for key, interval in open_now:
            self._close(key, interval)

    def _close(self, key: Hashable, interval: _Interval) -> None:
        with self._lock:
            if self._open.get(key) is not interval:
                return  # closed already (by a repeat past its end, or flush)
            del self._open[key]
        interval.summarize(self.interval_s)


@dataclass
class _Interval:
    logger: logging.Logger
    level: int
    text: str
    extra: dict[str, object]
    ends: float  # time.monotonic()
    suppressed: int = 0
    timer: threading.Timer | None = None

    def summarize(self, interval_s: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.suppressed:
            self.logger.log(
                self.level,
                "%s (suppressed %d repeats in the last %g s)",
                self.text,
                self.suppressed,
                interval_s,
                extra={**self.extra, "suppressed": self.suppressed},
            )


repeats = RepeatLimiter()  # the process's: `repeats.log(logger, logging.WARNING, "...")`
