"""The Celery side of a GPU worker: the "hyv.generate" task and the signals that build and stop each
pool process's hyv.service.worker_process.WorkerProcess (which runs jobs with
hyv.service.job_runner.JobRunner). hyv.service.celery_app `include`s this module.

A prefork child loads the model at worker_process_init; a job delivered before its model is loaded
is handed back to the queue (Celery's Reject with requeue). A job killed at the hard time limit is
failed by the main process (task_failure), since its pool process is gone. Before it takes any
message, the main process requeues (at the front) the jobs a killed worker of this machine left in
progress (worker_init: hyv.service.worker_process.requeue_orphans). When the worker stops,
the main process tells its pool processes (worker_shutting_down), whose running job then has its
grace to finish before it goes back to its queue (hyv.service.worker_shutdown).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task, shared_task, signals
from celery.exceptions import Reject

from hyv.service.celery_app import TASK_NAME
from hyv.service.job_runner import fail_past_hard_limit
from hyv.service.job_store import JobStore
from hyv.service.log import configure_logging, job_context
from hyv.service.settings import get_settings
from hyv.service.worker_process import WorkerProcess, requeue_orphans
from hyv.service.worker_shutdown import tell_pool_processes

logger = logging.getLogger(__name__)

_process: WorkerProcess | None = None
_process_lock = threading.Lock()


def worker_process() -> WorkerProcess:
    """This pool process's WorkerProcess, loading the model on first use (prefork children load it
    at start)."""
    global _process
    with _process_lock:
        if _process is None:
            process = WorkerProcess(get_settings())
            process.load()  # on failure: up but not ready, see generate()
            _process = process
        return _process


@signals.setup_logging.connect
def _on_setup_logging(**_: Any) -> None:
    configure_logging()  # JSON lines in the worker's main process too (instead of Celery's format)


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    """The main process, before it consumes: a job a killed worker of this machine left in progress
    goes back to the front of the queue now, ahead of the jobs waiting there, rather than once the
    dead run's claim lapses."""
    settings = get_settings()
    if not settings.redis_url:
        return
    try:
        store = JobStore.from_url(settings.redis_url, settings)
        requeue_orphans(store.jobs, store.claims, settings)
    except Exception:  # Redis not up yet: the pool process's beat does it as soon as it can
        logger.exception("requeueing jobs left in progress failed")


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    configure_logging()
    worker_process().stop_signals.install()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    """The main process starts its shutdown (a SIGTERM or SIGINT sent to it): its pool processes
    start their running job's grace."""
    from billiard.process import active_children

    tell_pool_processes([child.pid for child in active_children() if child.pid])


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    if _process is not None:
        _process.stop()


@signals.task_failure.connect
def _on_task_failure(exception: Any = None, args: Any = None, task_id: Any = None, **_: Any) -> None:
    """A hard time limit kills the pool process: the main process marks the job failed (if the
    claim is still that run's: its token ends with the task id)."""
    if isinstance(exception, TimeLimitExceeded) and args and task_id:
        fail_past_hard_limit(get_settings(), str(args[0]), str(task_id))


@shared_task(name=TASK_NAME, ignore_result=True, bind=True)
def generate(self: Task, job_id: str) -> str:
    with job_context(job_id):
        process = worker_process()
        model = process.model_of(job_id)
        if not process.ready(model):
            process.hand_back(job_id)
            raise Reject(process.not_ready_reason(model), requeue=True)
        return process.run(job_id, self.request.id, model)
