"""Structured JSON logs: one object per line, with the job id on every line logged during a job.

configure_logging()                 # once per process
with job_context(job_id): ...       # every record inside carries "job_id"
logger.info("enqueued", extra={"job_id": job.id})   # or name it explicitly
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator

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
