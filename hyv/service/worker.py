"""The GPU worker: the "hyv.generate" task, run in a Celery prefork child with the model loaded.

Each pool process loads hyv.engine.pipeline.VideoPipeline once (worker_process_init), then beats in
Redis (`hyv:workers:{host}`, TTL) as ready. For each job it:

1. claims it (hyv.service.job_claims.JobClaims.claim): a finished job is not rerun, a job another live worker
   holds is dropped (Redis redelivers unacknowledged messages after the visibility timeout even
   while their worker is alive), a job cancelled while queued never starts;
2. streams the fragmented MP4 from VideoPipeline.stream into storage (`{id}.mp4.part`, renamed
   to `{id}.mp4` at the end; with S3 storage uploaded first), with stage/step/progress written to
   the job records as they happen; a storage failure fails the job with `storage_error`;
3. checks for a cancel after every denoising step and decoded tile (the pipeline raises
   GenerationCancelledError) by reading a local event that a pub/sub message sets
   (hyv.service.worker_signals: no Redis round trip per step), and stops if it lost its claim;
   progress goes to Redis at most every `progress_interval_s` (each stage's start and end always);
4. renews its claim before publishing the video (a run whose lease lapsed unnoticed drops its
   output there), writes a PNG thumbnail of the first frame and the final state, which
   JobRecords.finish writes only while this run's token still holds the claim (one Lua script): a
   run that lost the job to another worker never ends it, it logs and returns `lost`.

The beat thread also renews the running job's claim and requeues in-progress jobs whose claim
expired (their worker died without Celery noticing, e.g. the whole machine went away).
Faults (hyv.service.worker_health): a model that fails to load leaves the process up but not ready
(/readyz shows the error) and hands every job back to the queue; a Redis restart pauses a job;
a full disk or a job over `job_memory_limit_mb` fails it (`storage_error`, `out_of_memory`).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import av
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import shared_task, signals
from celery.exceptions import Reject
from PIL import Image

from hyv.engine.pipeline import GenerationCancelledError, Progress, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.service import metrics, webhooks
from hyv.service.celery_app import TASK_NAME, celery_for
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.log import configure_logging, job_context
from hyv.service.settings import Settings, get_settings, queue_name
from hyv.service.storage import Storage, StorageError, make_storage
from hyv.service.worker_health import (
    LOAD_RETRY_S,
    Failure,
    abort_quietly,
    classify_failure,
    load_pipeline,
    memory_usage,
    not_ready_delay,
    release_memory,
    worker_redis,
)
from hyv.service.worker_signals import CancelWatch, ProgressWriter, RunningJob

logger = logging.getLogger(__name__)

CLEANUP_INTERVAL_S = 600.0


class WorkerRuntime:
    """Everything one pool process holds: the loaded pipeline, the parts of the job store it uses
    (records, claims, cancel requests, the worker registry), the beat thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.redis_url
        store = JobStore.connect(worker_redis(settings.redis_url), settings.job_ttl_seconds * 2)
        self.jobs = store.jobs
        self.claims = store.claims
        self.cancel_requests = store.cancels
        self.registry = store.workers
        self.storage: Storage = make_storage(settings)
        self.hostname = f"{socket.gethostname()}:{os.getpid()}"
        self.running: RunningJob | None = None
        self.cancels = CancelWatch(self.cancel_requests, self.hostname, lambda: self.running)
        self._stop = threading.Event()
        self.pipeline: VideoPipeline | None = None
        self.load_error: str | None = None  # why the model is not loaded (shown by /readyz)
        self._load_tried = 0.0
        self.started = time.time()
        self._beat = threading.Thread(target=self._beat_loop, name="hyv-beat", daemon=True)
        self._cleaning = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> bool:
        """Load the model; on failure keep the error (the heartbeat shows it, not ready) and stay up:
        the beat runs either way. True once loaded."""
        self._load_tried = time.monotonic()
        try:
            self.pipeline, self.load_error = load_pipeline(self.settings), None
        except Exception as exc:
            self.load_error = f"cannot load {self.settings.weights}: {type(exc).__name__}: {exc}"
            logger.exception("model not loaded: jobs stay queued", extra={"load_error": self.load_error})
        if not self._beat.is_alive():
            self.cancels.start()
            self._beat.start()
        try:
            self._heartbeat()
        except Exception:  # Redis away: the beat thread publishes it as soon as it can
            logger.exception("heartbeat failed")
        return self.pipeline is not None

    def ready(self) -> bool:
        """Whether jobs can run here; a failed load is retried at most every LOAD_RETRY_S."""
        if self.pipeline is None and time.monotonic() - self._load_tried > LOAD_RETRY_S:
            self.load()
        return self.pipeline is not None

    def hand_back(self, job_id: str) -> None:
        """A job delivered while the model is not loaded: logged, held a moment (so this worker does
        not spin on the queue), then Celery requeues the message; the job stays queued."""
        self.claims.log_run(job_id, "delivery", outcome="not_ready", worker=self.hostname)
        logger.warning("model not loaded: handing the job back to the queue", extra={"job_id": job_id})
        time.sleep(not_ready_delay(self.settings))

    def stop(self) -> None:
        self._stop.set()
        self.cancels.stop()
        self.registry.gone(self.hostname)

    def info(self) -> dict[str, Any]:
        running = self.running
        return {
            "hostname": self.hostname,
            "model": self.settings.model_name,
            "queue": self.settings.queue_name,
            "ready": self.pipeline is not None,
            "load_error": self.load_error,
            "busy_job": running.job_id if running else None,
            "pid": os.getpid(),
            "device": self.pipeline.options.device if self.pipeline else None,
            "started_at": int(self.started),
            "memory": memory_usage(self.pipeline),
        }

    # --- the beat ----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        beat = self.settings.worker_heartbeat_seconds
        self.registry.heartbeat(self.hostname, self.info(), ttl_seconds=beat * 3)

    def _beat_loop(self) -> None:
        last_cleanup = 0.0
        while not self._stop.wait(self.settings.worker_heartbeat_seconds):
            try:
                self._heartbeat()
                running = self.running
                if running and not self.claims.renew(
                    running.job_id, running.token, self.settings.job_lease_seconds
                ):
                    logger.error("lost the claim on the running job", extra={"job_id": running.job_id})
                    running.lost.set()
                self.requeue_orphans()
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

    def requeue_orphans(self) -> list[str]:
        """In-progress jobs nobody holds (their worker died): back to the queue, once."""
        requeued = []
        for job_id in self.jobs.running_ids():
            if self.claims.holder(job_id) is not None:
                continue
            written, job = self.jobs.transition(
                job_id,
                [JobStatus.IN_PROGRESS],
                require_unclaimed=True,
                status=JobStatus.QUEUED,
                stage=None,
                step=0,
                progress=0,
            )
            if written and job is not None:
                celery_for(self.settings).send_task(TASK_NAME, args=[job_id], queue=queue_name(job.model))
                logger.warning("requeued a job whose worker died", extra={"job_id": job_id})
                requeued.append(job_id)
        return requeued

    # --- one job -----------------------------------------------------------------------------------

    def run(self, job_id: str) -> str:
        """Claim and run one job; returns what happened (for logs and tests)."""
        token = f"{self.hostname}:{uuid.uuid4().hex[:8]}"
        claim = self.claims.claim(job_id, token, self.settings.job_lease_seconds)
        self.claims.log_run(job_id, "delivery", outcome=claim, worker=self.hostname)
        if claim in ("missing", "finished", "held"):
            logger.info(f"dropping delivery: job {claim}", extra={"job_id": job_id, "claim": claim})
            return claim
        if claim == "cancel":
            outcome = self._finish_cancelled(job_id, token, "cancelled before it started")
            self.claims.release(job_id, token)
            return outcome
        current = self.jobs.get(job_id)
        assert current is not None
        now = time.time()
        written, job = self.jobs.transition(
            job_id,
            [JobStatus.QUEUED, JobStatus.IN_PROGRESS],
            status=JobStatus.IN_PROGRESS,
            started_at=int(now),
            attempts=current.attempts + 1,
            worker=self.hostname,
            stage=None,
            step=0,
            progress=0,
            error_code=None,
            error_message=None,
        )
        if not written or job is None:
            self.claims.release(job_id, token)
            return "dropped"
        if job.attempts == 1:
            metrics.observe_queue_wait(now - job.created_at)
        running = self.running = RunningJob(job_id, token)
        self.cancels.check_flag(running)  # cancelled between the claim and now: no message reached us
        self._heartbeat()
        outcome = "error"
        try:
            outcome = self._generate(job, running)
            return outcome
        finally:
            self.claims.log_run(job_id, "end", outcome=outcome, worker=self.hostname, **running.summary())
            self.running = None
            self.claims.release(job_id, token)
            self._heartbeat()

    def _generate(self, job: Job, running: RunningJob) -> str:
        assert self.pipeline is not None
        job_id = job.id
        jobs, claims = self.jobs, self.claims
        try:
            request = GenerationRequest(**job.request, image=self.storage.load_input_image(job_id))
            plan = self.pipeline.plan(request)
        except StorageError as exc:
            return self._fail(job, running.token, "storage_error", str(exc))
        except (ValueError, TypeError) as exc:
            return self._fail(job, running.token, "invalid_request", str(exc))

        last_step = [time.perf_counter()]
        progress_writer = ProgressWriter(jobs, running, self.settings.progress_interval_s)

        def on_progress(progress: Progress) -> None:
            now = time.perf_counter()
            if progress.stage == "denoise":
                metrics.observe_denoise_step(now - last_step[0])
            last_step[0] = now
            progress_writer.report(progress.stage, progress.step, progress.total, progress.fraction)

        try:
            writer = self.storage.open_writer(job_id)
        except (StorageError, OSError) as exc:  # the message says why, without the server's paths
            return self._fail(job, running.token, "storage_error", classify_failure(exc).message)
        result: dict[str, Any] = {}
        chunks = 0
        failure: Failure | None = None
        try:
            for chunk in self.pipeline.stream(request, on_progress, running.stop_requested, result):
                writer.write(chunk)
                chunks += 1
                if chunks == 2:  # the first media fragment: the video can start playing
                    metrics.observe_first_byte(time.time() - job.created_at)
                progress_writer.note(content_bytes=writer.bytes_written)
            # Publish only while the job is still ours (renewing the lease covers the rename, the
            # upload and the final write): a run whose lease lapsed unnoticed ends here.
            if not claims.renew(job_id, running.token, self.settings.job_lease_seconds):
                running.lost.set()
                writer.abandon()
                return self._lost(job_id, "before publishing its video")
            writer.close()
        except GenerationCancelledError:
            if running.lost.is_set():  # another worker owns the job now: leave its files alone
                writer.abandon()
                return self._lost(job_id, "before publishing its video")
            writer.abort()
            # The cancelled record shows where it stopped (the last step, even if not yet written).
            unwritten = progress_writer.unwritten()
            return self._finish_cancelled(job_id, running.token, "cancelled while running", **unwritten)
        except (SoftTimeLimitExceeded, TimeLimitExceeded):
            writer.abort()
            return self._fail(
                job,
                running.token,
                "timeout",
                f"the job ran past its time limit ({self.settings.task_soft_time_limit} s)",
                **progress_writer.unwritten(),
            )
        except Exception as exc:  # out_of_memory, storage_error (disk full, S3 upload)... or a bug
            failure = classify_failure(exc)
            abort_quietly(writer)
            if failure.code == "internal_error":
                logger.exception("generation failed")
        if failure is not None:  # handled here, once the exception and its frames (tensors) are gone
            return self._failed(job, running.token, failure, **progress_writer.unwritten())

        self._save_thumbnail(job_id)
        timings = {k: float(v) for k, v in dict(result.get("seconds", {})).items()}  # type: ignore[call-overload]
        for stage, seconds in timings.items():
            metrics.observe_stage(stage, seconds)
        now = int(time.time())
        written, _ = jobs.finish(
            job_id,
            running.token,
            JobStatus.COMPLETED,
            progress=100,
            stage="encode",
            completed_at=now,
            expires_at=now + self.settings.job_ttl_seconds,
            timings=timings,
            content_bytes=writer.bytes_written,
            num_frames=plan.num_frames,
            fps=plan.fps,
            size=f"{plan.width}x{plan.height}",
        )
        if not written:  # the lease lapsed after the check above: the new owner's run decides
            return self._lost(job_id, "after publishing its video")
        metrics.job_finished(job.model, JobStatus.COMPLETED)
        logger.info(
            "job completed",
            extra={"bytes": writer.bytes_written, **{f"{k}_s": v for k, v in timings.items()}},
        )
        self._notify(job_id)
        return "completed"

    def _save_thumbnail(self, job_id: str) -> None:
        try:
            with self.storage.video_file(job_id) as path:
                png = first_frame_png(path)
            self.storage.save_thumbnail(job_id, png)
        except Exception:
            logger.exception("thumbnail failed")

    def _failed(self, job: Job, token: str, failure: Failure, **progress: Any) -> str:
        """A job that raised: memory released after an OOM; nothing written when Redis is away
        (the claim lapses and the job is requeued: it is not the job's fault)."""
        if failure.code == "redis_unavailable":
            logger.error("Redis unreachable: the job will be requeued", extra={"error": failure.message})
            return "redis_unavailable"
        if failure.code == "out_of_memory" and self.pipeline is not None:
            release_memory(self.pipeline.device)
        return self._fail(job, token, failure.code, failure.message, **progress)

    def _fail(self, job: Job, token: str, code: str, message: str, **progress: Any) -> str:
        """The failed final state (if the claim is still ours); `progress`: the last
        stage/step/progress not yet written."""
        now = int(time.time())
        written, _ = self.jobs.finish(
            job.id,
            token,
            JobStatus.FAILED,
            **progress,
            error_code=code,
            error_message=message,
            completed_at=now,
            expires_at=now + self.settings.job_ttl_seconds,
        )
        if not written:
            return self._lost(job.id, f"while failing it ({code}: {message})")
        metrics.job_finished(job.model, JobStatus.FAILED)
        logger.warning("job failed", extra={"error_code": code, "error_message": message})
        self._notify(job.id)
        return "failed"

    def _finish_cancelled(self, job_id: str, token: str, message: str, **progress: Any) -> str:
        written, job = self.jobs.finish(
            job_id,
            token,
            JobStatus.CANCELLED,
            **progress,
            error_code="cancelled",
            error_message=message,
            completed_at=int(time.time()),
        )
        if not written or job is None:  # not ours any more: the files are the new owner's
            return self._lost(job_id, "while cancelling it")
        try:
            self.storage.delete(job_id)
        except StorageError:
            logger.exception("could not delete a cancelled job's files")
        metrics.job_finished(job.model, JobStatus.CANCELLED)
        logger.info("job cancelled", extra={"job_id": job_id})
        self._notify(job_id)
        return "cancelled"

    def _lost(self, job_id: str, when: str) -> str:
        """This run's claim lapsed and another worker took the job: the job is left untouched."""
        logger.warning(
            f"lost the claim {when}: another worker owns the job now; this run's output is dropped",
            extra={"job_id": job_id},
        )
        return "lost"

    def _notify(self, job_id: str) -> None:
        """The job's webhook, if it asked for one (hyv.service.webhooks delivers in the background)."""
        job = self.jobs.get(job_id)
        if job is None or not job.webhook_url:
            return
        try:
            webhooks.deliver_for_job(job, self.settings)
        except Exception:
            logger.exception("webhook delivery failed")


def first_frame_png(path: Path) -> bytes:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        image: Image.Image = frame.to_image()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- Celery wiring ---------------------------------------------------------------------------------

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, loading the model on first use (prefork children load it at start)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            rt = WorkerRuntime(get_settings())
            rt.load()  # on failure: up but not ready, see generate()
            _runtime = rt
        return _runtime


@signals.setup_logging.connect
def _on_setup_logging(**_: Any) -> None:
    configure_logging()  # JSON lines in the worker's main process too (instead of Celery's format)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    configure_logging()
    runtime()


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.stop()


@signals.task_failure.connect
def _on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, args: Any = None, **_: Any
) -> None:
    """A hard time limit kills the pool process: the parent marks the job failed (not requeued)."""
    if not isinstance(exception, TimeLimitExceeded) or not args:
        return
    settings = get_settings()
    assert settings.redis_url
    store = JobStore.from_url(settings.redis_url)
    job_id = str(args[0])
    written, job = store.jobs.transition(
        job_id,
        [JobStatus.QUEUED, JobStatus.IN_PROGRESS],
        status=JobStatus.FAILED,
        error_code="timeout",
        error_message=f"the job ran past its hard time limit ({settings.task_hard_time_limit} s)",
        completed_at=int(time.time()),
    )
    if written and job is not None:
        metrics.job_finished(job.model, JobStatus.FAILED)
    store.claims.drop(job_id)


@shared_task(name=TASK_NAME, ignore_result=True)
def generate(job_id: str) -> str:
    with job_context(job_id):
        rt = runtime()
        if not rt.ready():
            rt.hand_back(job_id)
            raise Reject(f"model not loaded: {rt.load_error}", requeue=True)
        return rt.run(job_id)
