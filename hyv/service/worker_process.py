"""A worker's pool process: its model, its beat in Redis, its job runner (hyv.service.job_runner).

Each pool process loads hyv.engine.pipeline.VideoPipeline once (worker_process_init), then beats in
Redis (`hyv:workers:{host}`, TTL) as ready. The beat thread also renews the running job's claim,
requeues in-progress jobs whose claim expired (their worker died without Celery noticing, e.g. the
whole machine went away) or whose claim names a process of this machine that is gone
(hyv.service.run_tokens: a worker starting where one was killed does it before it takes a message,
so the job runs first and never reads in_progress while nothing runs it) and,
every CLEANUP_INTERVAL_S, removes expired files from storage. Asked to stop, it gives its running
job a grace and then hands it back (hyv.service.worker_shutdown).

Faults: a model that fails to load leaves the process up but not ready (/readyz shows the error):
every delivered job is handed back to the queue (`hand_back`) and the load is retried at most every
LOAD_RETRY_S. A Redis restart pauses a running job: the process's Redis client (`worker_redis`)
retries a lost connection for up to REDIS_RIDE_OUT_S (a restart takes about a second), so the job
waits at its next write instead of failing; past that the job is left to the claim reaper.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from hyv.service.celery_app import TASK_NAME, celery_for
from hyv.service.job_claims import JobClaims
from hyv.service.job_memory import memory_usage
from hyv.service.job_records import JobRecords
from hyv.service.job_runner import JobRunner, ServedPipeline, requeue_job
from hyv.service.job_store import JobStore
from hyv.service.model_loading import LOAD_RETRY_S, load_pipeline
from hyv.service.queue_reaper import QueueReaper
from hyv.service.run_tokens import process_is_gone
from hyv.service.settings import Settings
from hyv.service.storage import Storage, make_storage
from hyv.service.worker_group import WorkerGroup
from hyv.service.worker_shutdown import StopSignals

logger = logging.getLogger(__name__)

CLEANUP_INTERVAL_S = 600.0
REDIS_RIDE_OUT_S = 30.0
_BACKOFF_CAP_S = 1.0


class WorkerProcess:
    """Everything one pool process holds: the loaded pipeline, the parts of the job store it uses,
    the job runner, the beat thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.redis_url
        store = JobStore.connect(worker_redis(settings.redis_url), settings)
        self.jobs = store.jobs
        self.claims = store.claims
        self.registry = store.workers
        self.storage: Storage = make_storage(settings)
        self.hostname = f"{socket.gethostname()}:{os.getpid()}"
        self.runner = JobRunner(settings, store, self.storage, self.hostname, self._heartbeat)
        self._busy = False  # inside run(): a stop signal starts the job's grace rather than ending us
        self.stop_signals = StopSignals(
            self.runner.hand_back, settings.shutdown_grace_seconds, lambda: self._busy
        )
        self._stop = threading.Event()
        self.pipeline: ServedPipeline | None = None
        self.group: WorkerGroup | None = None  # sp_degree > 1: this process is the group's rank 0
        self.load_error: str | None = None  # why the model is not loaded (shown by /readyz)
        self._load_tried = 0.0
        self.started = time.time()
        self._beat = threading.Thread(target=self._beat_loop, name="hyv-beat", daemon=True)
        self._cleaning = threading.Event()
        self.queue_reaper = QueueReaper(
            store.redis,
            self.jobs,
            self.claims,
            settings.model_name,
            settings.queue_name,
            settings.queued_reap_after_seconds,
            self._send,
        )

    def load(self) -> bool:
        """Load the model; on failure keep the error (the heartbeat shows it, not ready) and stay up:
        the beat runs either way. True once loaded."""
        self._load_tried = time.monotonic()
        try:
            self.pipeline, self.load_error = self._load_pipeline(), None
        except Exception as exc:
            self.load_error = f"cannot load {self.settings.weights}: {type(exc).__name__}: {exc}"
            logger.exception("model not loaded: jobs stay queued", extra={"load_error": self.load_error})
        if not self._beat.is_alive():
            self.runner.cancels.start()
            self._beat.start()
        try:
            self._heartbeat()
        except Exception:  # Redis away: the beat thread publishes it as soon as it can
            logger.exception("heartbeat failed")
        return self.pipeline is not None

    def _load_pipeline(self) -> ServedPipeline:
        """One pipeline on this process's device, or a worker group's rank 0 (sp_degree > 1)."""
        if self.settings.sp_degree > 1:
            self.group = WorkerGroup(self.settings)
            return self.group.start()
        pipeline: ServedPipeline = load_pipeline(self.settings)
        return pipeline

    def ready(self) -> bool:
        """Whether jobs can run here; a failed load is retried at most every LOAD_RETRY_S."""
        if self.pipeline is None and time.monotonic() - self._load_tried > LOAD_RETRY_S:
            self.load()
        return self.pipeline is not None

    def run(self, job_id: str, task_id: str | None = None) -> str:
        """Run one delivered job (the model is loaded: see ready()); returns the run's outcome."""
        assert self.pipeline is not None
        self.stop_signals.install()  # again: billiard set its SIGTERM handler after our first install
        self._busy = True
        try:
            outcome = self.runner.run(job_id, self.pipeline, task_id)
        except BaseException:  # the process is going away (a time limit, a stop signal)
            if self.group is not None:
                self.group.stop(kill=True)
            raise
        finally:
            self._busy = False
            self.stop_signals.job_ended()
        if self.group is not None and self.group.broken:
            self._restart_group()
        return outcome

    def _restart_group(self) -> None:
        """A fault broke the group during the job: a fresh one before the next job (not ready while
        it starts; a failed start is retried like a failed load)."""
        assert self.group is not None
        self.pipeline = None
        self._heartbeat_quietly()
        self._load_tried = time.monotonic()
        try:
            self.group.restart()
            self.pipeline, self.load_error = self.group, None
        except Exception as exc:
            self.load_error = f"cannot restart the worker group: {type(exc).__name__}: {exc}"
            logger.exception("worker group not restarted: jobs stay queued")
        self._heartbeat_quietly()

    def _heartbeat_quietly(self) -> None:
        try:
            self._heartbeat()
        except Exception:
            logger.exception("heartbeat failed")

    def hand_back(self, job_id: str) -> None:
        """A job delivered while the model is not loaded: logged, held a moment (so this worker does
        not spin on the queue), then Celery requeues the message; the job stays queued."""
        self.claims.log_run(job_id, "delivery", outcome="not_ready", worker=self.hostname)
        logger.warning("model not loaded: handing the job back to the queue", extra={"job_id": job_id})
        time.sleep(not_ready_delay(self.settings))

    def stop(self) -> None:
        self._stop.set()
        self.runner.cancels.stop()
        if self.group is not None:
            self.group.stop()
        self.registry.gone(self.hostname)

    def info(self) -> dict[str, Any]:
        running = self.runner.running
        return {
            "hostname": self.hostname,
            "model": self.settings.model_name,
            "queue": self.settings.queue_name,
            "ready": self.pipeline is not None,
            "load_error": self.load_error,
            "busy_job": running.job_id if running else None,
            "pid": os.getpid(),
            "device": str(self.pipeline.device) if self.pipeline else None,
            "started_at": int(self.started),
            "memory": memory_usage(self.pipeline),
            "sp": self.group.info() if self.group is not None else {"degree": 1},
        }

    def _heartbeat(self) -> None:
        beat = self.settings.worker_heartbeat_seconds
        self.registry.heartbeat(self.hostname, self.info(), ttl_seconds=beat * 3)

    def _beat_loop(self) -> None:
        last_cleanup = 0.0
        while not self._stop.wait(self.settings.worker_heartbeat_seconds):
            try:
                self._heartbeat()
                self.runner.renew_claim()
                self.requeue_orphans()
                self.queue_reaper.sweep()
                if time.monotonic() - last_cleanup > CLEANUP_INTERVAL_S and not self._cleaning.is_set():
                    last_cleanup = time.monotonic()
                    self._cleaning.set()  # own thread: a slow or unreachable S3 must not delay the beat
                    threading.Thread(target=self._cleanup, name="hyv-cleanup", daemon=True).start()
            except Exception:  # the beat must survive a Redis hiccup
                logger.exception("worker beat failed")

    def _cleanup(self) -> None:
        try:
            self.storage.cleanup_expired(time.time())
        except Exception:
            logger.exception("storage cleanup failed")
        finally:
            self._cleaning.clear()

    def _send(self, job_id: str) -> None:
        celery_for(self.settings).send_task(TASK_NAME, args=[job_id], queue=self.settings.queue_name)

    def requeue_orphans(self) -> list[str]:
        return requeue_orphans(self.jobs, self.claims, self.settings)


def requeue_orphans(jobs: JobRecords, claims: JobClaims, settings: Settings) -> list[str]:
    """In-progress jobs nobody holds (their worker died: its claim lapsed, or it names a process of
    this machine that is gone): back to the front of the queue, once. Every beat runs it, and a
    worker's main process before it takes its first message (hyv.service.worker)."""
    requeued = []
    for job_id in jobs.running_ids():
        holder = claims.holder(job_id)
        if holder is not None:
            if not process_is_gone(holder):
                continue
            claims.release(job_id, holder)  # that dead run's claim only
        if requeue_job(jobs, settings, job_id):
            logger.warning("requeued a job whose worker died", extra={"job_id": job_id})
            requeued.append(job_id)
    return requeued


def worker_redis(url: str, ride_out_s: float = REDIS_RIDE_OUT_S) -> redis.Redis:
    """A client that retries connection errors with backoff (capped at 1 s) for about ride_out_s."""
    retries = max(1, int(ride_out_s / _BACKOFF_CAP_S) + 5)
    retry = Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=0.05), retries)
    client: redis.Redis = redis.Redis.from_url(
        url,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
    )
    return client


def not_ready_delay(settings: Settings) -> float:
    """How long a worker without its model holds a message before handing it back: long enough
    not to spin on the queue, short enough that a good worker soon gets the job."""
    return min(5.0, max(0.2, settings.worker_heartbeat_seconds))
