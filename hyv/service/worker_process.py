"""A worker's pool process: its model, its beat in Redis, its job runner (hyv.service.job_runner).

Each pool process loads hyv.engine.pipeline.VideoPipeline once (worker_process_init), then beats in
Redis (`hyv:workers:{host}`, TTL) as ready. The beat thread also renews the running job's claim,
requeues in-progress jobs whose claim expired (their worker died without Celery noticing, e.g. the
whole machine went away) or whose claim names a process of this machine that is gone
(hyv.service.run_tokens: a worker starting where one was killed does it before it takes a message,
so the job runs first and never reads in_progress while nothing runs it) and,
every CLEANUP_INTERVAL_S, removes expired files from storage. Asked to stop, it gives its running
job a grace and then hands it back (hyv.service.worker_shutdown).

Several models (hyv.service.served_models): the process loads each model the worker is configured
for (HYV_WORKER_MODELS, default every served one) and takes jobs from each one's queue; a job runs
on the pipeline of its record's `model`. The beat says which models are loaded (`models`).
A worker group (sp_degree > 1) serves one model.

Faults: a model that fails to load leaves the process up but not ready for it (/readyz shows the
error): every delivered job of that model is handed back to the queue (`hand_back`) and the load is
retried at most every LOAD_RETRY_S. A Redis restart pauses a running job: the process's Redis
client (`worker_redis`) retries a lost connection for up to REDIS_RIDE_OUT_S (a restart takes about
a second), so the job waits at its next write instead of failing; past that the job is left to the
claim reaper.
"""

from __future__ import annotations

import functools
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
from hyv.service.served_models import ModelSource, settings_for, worker_model_sources
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
        self.sources: list[ModelSource] = worker_model_sources(settings)
        if settings.sp_degree > 1 and len(self.sources) > 1:
            raise ValueError(
                f"a worker group (sp_degree {settings.sp_degree}) serves one model, not "
                f"{[s.name for s in self.sources]}: start one group per model (hyv worker --models NAME)"
            )
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
        self.pipelines: dict[str, ServedPipeline] = {}  # model name -> its loaded pipeline
        self.group: WorkerGroup | None = None  # sp_degree > 1: this process is the group's rank 0
        self.load_errors: dict[str, str] = {}  # model name -> why it is not loaded (shown by /readyz)
        self._load_tried = 0.0
        self.started = time.time()
        self._beat = threading.Thread(target=self._beat_loop, name="hyv-beat", daemon=True)
        self._cleaning = threading.Event()
        self.queue_reapers = [
            QueueReaper(
                store.redis,
                self.jobs,
                self.claims,
                source.name,
                source.queue,
                settings.queued_reap_after_seconds,
                functools.partial(self._send, queue=source.queue),
            )
            for source in self.sources
        ]

    @property
    def pipeline(self) -> ServedPipeline | None:
        """The first model's pipeline (the only one of a single-model worker)."""
        return self.pipelines.get(self.sources[0].name)

    @pipeline.setter
    def pipeline(self, pipeline: ServedPipeline | None) -> None:
        if pipeline is None:
            self.pipelines.pop(self.sources[0].name, None)
        else:
            self.pipelines[self.sources[0].name] = pipeline

    @property
    def load_error(self) -> str | None:
        """Why some model is not loaded (the first such), None when all are."""
        return next(iter(self.load_errors.values()), None)

    def load(self) -> bool:
        """Load the models not loaded yet; on failure keep the error (the heartbeat shows it, not
        ready for that model) and stay up: the beat runs either way. True once all are loaded."""
        self._load_tried = time.monotonic()
        for source in self.sources:
            if source.name in self.pipelines:
                continue
            try:
                self.pipelines[source.name] = self._load_pipeline(settings_for(self.settings, source))
                self.load_errors.pop(source.name, None)
            except Exception as exc:
                error = f"cannot load {source.weights}: {type(exc).__name__}: {exc}"
                self.load_errors[source.name] = error
                logger.exception(
                    "model not loaded: its jobs stay queued",
                    extra={"model": source.name, "load_error": error},
                )
        if not self._beat.is_alive():
            self.runner.cancels.start()
            self._beat.start()
        try:
            self._heartbeat()
        except Exception:  # Redis away: the beat thread publishes it as soon as it can
            logger.exception("heartbeat failed")
        return len(self.pipelines) == len(self.sources)

    def _load_pipeline(self, settings: Settings) -> ServedPipeline:
        """One model's pipeline on this process's device, or a worker group's rank 0 (sp_degree > 1)."""
        if settings.sp_degree > 1:
            self.group = WorkerGroup(settings)
            return self.group.start()
        pipeline: ServedPipeline = load_pipeline(settings)
        return pipeline

    def model_of(self, job_id: str) -> str:
        """The model a delivered job asks for (its record's); the first model's when the record is
        gone (the run then drops the delivery)."""
        job = self.jobs.get(job_id)
        return job.model if job is not None else self.sources[0].name

    def ready(self, model: str | None = None) -> bool:
        """Whether jobs of `model` (default: the first) can run here; a failed load is retried at
        most every LOAD_RETRY_S."""
        model = model or self.sources[0].name
        if model not in self.pipelines and time.monotonic() - self._load_tried > LOAD_RETRY_S:
            self.load()
        return model in self.pipelines

    def not_ready_reason(self, model: str) -> str:
        if all(source.name != model for source in self.sources):
            return f"this worker does not serve model {model!r} (it serves {[s.name for s in self.sources]})"
        return f"model {model!r} not loaded: {self.load_errors.get(model)}"

    def run(self, job_id: str, task_id: str | None = None, model: str | None = None) -> str:
        """Run one delivered job on `model`'s pipeline (loaded: see ready()); returns the outcome."""
        model = model or self.sources[0].name
        pipeline = self.pipelines[model]
        self.stop_signals.install()  # again: billiard set its SIGTERM handler after our first install
        self._busy = True
        try:
            outcome = self.runner.run(job_id, pipeline, task_id, model)
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
        name = self.sources[0].name  # a group serves one model
        self.pipelines.pop(name, None)
        self._heartbeat_quietly()
        self._load_tried = time.monotonic()
        try:
            self.group.restart()
            self.pipelines[name] = self.group
            self.load_errors.pop(name, None)
        except Exception as exc:
            self.load_errors[name] = f"cannot restart the worker group: {type(exc).__name__}: {exc}"
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
        """The heartbeat: `model`, `queue` and `ready` are the first model's (a single-model
        worker's); `models` has every model's readiness and load error."""
        running = self.runner.running
        first = self.sources[0]
        return {
            "hostname": self.hostname,
            "model": first.name,
            "queue": first.queue,
            "ready": first.name in self.pipelines,
            "load_error": self.load_errors.get(first.name),
            "models": {
                source.name: {
                    "ready": source.name in self.pipelines,
                    "load_error": self.load_errors.get(source.name),
                }
                for source in self.sources
            },
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
                for reaper in self.queue_reapers:
                    reaper.sweep()
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

    def _send(self, job_id: str, queue: str) -> None:
        celery_for(self.settings).send_task(TASK_NAME, args=[job_id], queue=queue)

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
