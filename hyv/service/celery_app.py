"""The Celery app on Redis: one queue per model (`hyv.{model_name}`), one task ("hyv.generate").

Settings that matter for long GPU jobs:
- acks_late + reject_on_worker_lost: a message is acknowledged when the job ends, and requeued if
  the worker process dies mid-job.
- prefetch 1, concurrency 1: a worker holds one job; the rest wait in Redis for any free worker.
- visibility_timeout: Redis redelivers an unacknowledged message after this long even if its worker
  is alive (Celery's "long jobs run twice" trap). It is set above the hard time limit, and the
  per-job claim (hyv.service.job_claims) drops a duplicate delivery anyway (the tests shorten it on purpose).
- soft/hard time limits, and worker_cancel_long_running_tasks_on_connection_loss.
- the transport: kombu's Redis transport with its acknowledgement fixed for a Redis restart
  (hyv.service.broker: otherwise a job ending while Redis is down leaves the worker idle for good),
  over TLS too for a rediss:// URL (broker_use_ssl from hyv.service.broker.broker_ssl).

The API process never imports the worker module (torch): it sends the task by name via `enqueue`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

from hyv.service.broker import broker_ssl, transport_for
from hyv.service.job_model import Job
from hyv.service.settings import Settings, get_settings, queue_name

logger = logging.getLogger(__name__)

TASK_NAME = "hyv.generate"


def make_celery(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise ValueError(
            "settings.redis_url is not set (HYV_REDIS_URL); `hyv serve` sets it for its children"
        )
    app = Celery("hyv", broker=settings.redis_url, include=["hyv.service.worker"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_hard_time_limit,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport=transport_for(settings.redis_url),
        broker_use_ssl=broker_ssl(settings.redis_url),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
        },
        task_default_queue=queue_name(settings.model_name),
        task_ignore_result=True,  # job state lives in hyv.service.job_records, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,  # no pidbox queues: nothing listens to broadcasts
    )
    return app


_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def celery_for(settings: Settings) -> Celery:
    """One app per broker URL, for processes that only send tasks (the API)."""
    assert settings.redis_url
    with _apps_lock:
        if settings.redis_url not in _apps:
            _apps[settings.redis_url] = make_celery(settings)
        return _apps[settings.redis_url]


def enqueue(job: Job, settings: Settings | None = None) -> None:
    """Send the job to its model's queue (the job record must already be stored: JobRecords.create)."""
    settings = settings or get_settings()
    celery_for(settings).send_task(TASK_NAME, args=[job.id], queue=queue_name(job.model))
    logger.info("enqueued", extra={"job_id": job.id, "queue": queue_name(job.model)})


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    """A worker's main process (`hyv worker`, or `celery -A hyv.service.celery_app:celery_app
    worker` as `hyv serve` starts it): its metrics folder, before the pool processes fork."""
    from hyv.service.metrics import setup_metrics

    setup_metrics(get_settings())


# `celery -A hyv.service.celery_app worker` finds this app; it reads the environment (HYV_*) only
# when a worker starts, never on import by the API.
def __getattr__(name: str) -> Celery:
    if name in ("app", "celery_app"):
        return celery_for(get_settings())
    raise AttributeError(name)
