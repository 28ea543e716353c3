"""The GPU worker: the "hyv.generate" task, run in a Celery prefork child with the model loaded.

Each pool process loads engine.pipeline.VideoPipeline once (worker_process_init), then beats in
Redis (`hyv:workers:{host}`, TTL) as ready. For each job it:

1. claims it (service.jobs.JobStore.claim): a finished job is not rerun, a job another live worker
   holds is dropped (Redis redelivers unacknowledged messages after the visibility timeout even
   while their worker is alive), a job cancelled while queued never starts;
2. streams the fragmented MP4 from VideoPipeline.stream into storage (`{id}.mp4.part`, renamed
   to `{id}.mp4` at the end; with S3 storage uploaded first), with stage/step/progress written to
   the JobStore as they happen; a storage failure fails the job with `storage_error`;
3. polls the cancel flag at every denoising step and decoded tile (the pipeline raises
   GenerationCancelledError), and stops if it lost its claim;
4. writes a PNG thumbnail of the first frame and the final state.

The beat thread also renews the running job's claim and requeues in-progress jobs whose claim
expired (their worker died without Celery noticing, e.g. the whole machine went away).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import shared_task, signals
from PIL import Image

from engine.pipeline import GenerationCancelledError, PipelineOptions, Progress, VideoPipeline
from engine.request import GenerationRequest
from service import metrics, webhooks
from service.celery_app import TASK_NAME, celery_for
from service.jobs import Job, JobStatus, JobStore
from service.log import configure_logging, job_context
from service.settings import Settings, get_settings, queue_name
from service.storage import Storage, StorageError, make_storage

logger = logging.getLogger(__name__)

CLEANUP_INTERVAL_S = 600.0


@dataclass
class _Running:
    job_id: str
    token: str
    lost: threading.Event = field(default_factory=threading.Event)


class WorkerRuntime:
    """Everything one pool process holds: the loaded pipeline, the store, the beat thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.redis_url
        self.store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds * 2)
        self.storage: Storage = make_storage(settings)
        self.hostname = f"{socket.gethostname()}:{os.getpid()}"
        self.running: _Running | None = None
        self._stop = threading.Event()
        self.pipeline: VideoPipeline | None = None
        self.started = time.time()
        self._beat = threading.Thread(target=self._beat_loop, name="hyv-beat", daemon=True)
        self._cleaning = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        from engine.pipeline import default_device_and_dtype
        from models.checkpoint_io import parse_dtype

        device, dtype = default_device_and_dtype()
        device = self.settings.device or device
        if not device.startswith("cuda"):
            dtype = torch.float32  # bf16 is the default on GPUs only
        options = PipelineOptions(device=device, dtype=parse_dtype(self.settings.dtype) or dtype)
        start = time.perf_counter()
        self.pipeline = VideoPipeline.from_dir(self.settings.weights, options, self.settings.text_encoder)
        logger.info(
            "pipeline loaded",
            extra={
                "weights": str(self.settings.weights),
                "device": options.device,
                "load_s": round(time.perf_counter() - start, 3),
            },
        )
        self._heartbeat()
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        self.store.worker_gone(self.hostname)

    def info(self) -> dict[str, Any]:
        running = self.running
        return {
            "hostname": self.hostname,
            "model": self.settings.model_name,
            "queue": self.settings.queue_name,
            "ready": self.pipeline is not None,
            "busy_job": running.job_id if running else None,
            "pid": os.getpid(),
            "device": self.pipeline.options.device if self.pipeline else None,
            "started_at": int(self.started),
            "memory": _memory(self.pipeline),
        }

    # --- the beat ----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        beat = self.settings.worker_heartbeat_seconds
        self.store.worker_heartbeat(self.hostname, self.info(), ttl_seconds=beat * 3)

    def _beat_loop(self) -> None:
        last_cleanup = 0.0
        while not self._stop.wait(self.settings.worker_heartbeat_seconds):
            try:
                self._heartbeat()
                running = self.running
                if running and not self.store.renew_claim(
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
        for job_id in self.store.running_ids():
            if self.store.claim_holder(job_id) is not None:
                continue
            written, job = self.store.transition(
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
        claim = self.store.claim(job_id, token, self.settings.job_lease_seconds)
        self.store.log_run(job_id, "delivery", outcome=claim, worker=self.hostname)
        if claim in ("missing", "finished", "held"):
            logger.info(f"dropping delivery: job {claim}", extra={"job_id": job_id, "claim": claim})
            return claim
        if claim == "cancel":
            self._finish_cancelled(job_id, "cancelled before it started")
            self.store.release_claim(job_id, token)
            return "cancelled"
        current = self.store.get(job_id)
        assert current is not None
        now = time.time()
        written, job = self.store.transition(
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
            self.store.release_claim(job_id, token)
            return "dropped"
        if job.attempts == 1:
            metrics.observe_queue_wait(now - job.created_at)
        self.running = _Running(job_id, token)
        self._heartbeat()
        outcome = "error"
        try:
            outcome = self._generate(job, self.running)
            return outcome
        finally:
            self.store.log_run(job_id, "end", outcome=outcome, worker=self.hostname)
            self.running = None
            self.store.release_claim(job_id, token)
            self._heartbeat()

    def _generate(self, job: Job, running: _Running) -> str:
        assert self.pipeline is not None
        job_id = job.id
        store = self.store
        try:
            request = GenerationRequest(**job.request, image=self.storage.load_input_image(job_id))
            plan = self.pipeline.plan(request)
        except StorageError as exc:
            return self._fail(job, "storage_error", str(exc))
        except (ValueError, TypeError) as exc:
            return self._fail(job, "invalid_request", str(exc))

        last_step = [time.perf_counter()]

        def on_progress(progress: Progress) -> None:
            now = time.perf_counter()
            fields: dict[str, Any] = {
                "stage": progress.stage,
                "progress": min(99, int(progress.fraction * 100)),
            }
            if progress.stage == "denoise":
                metrics.observe_denoise_step(now - last_step[0])
                fields.update(step=progress.step, total_steps=progress.total)
            last_step[0] = now
            store.update(job_id, **fields)

        def cancelled() -> bool:
            return running.lost.is_set() or store.is_cancel_requested(job_id)

        try:
            writer = self.storage.open_writer(job_id)
        except (StorageError, OSError) as exc:
            return self._fail(job, "storage_error", f"{type(exc).__name__}: {exc}")
        result: dict[str, Any] = {}
        chunks = 0
        try:
            for chunk in self.pipeline.stream(request, on_progress, cancelled, result):
                writer.write(chunk)
                chunks += 1
                if chunks == 2:  # the first media fragment: the video can start playing
                    metrics.observe_first_byte(time.time() - job.created_at)
                store.update(job_id, content_bytes=writer.bytes_written)
            writer.close()
        except GenerationCancelledError:
            if running.lost.is_set():  # another worker owns the job now: leave its files alone
                writer.abandon()
                return "lost"
            writer.abort()
            self._finish_cancelled(job_id, "cancelled while running")
            return "cancelled"
        except (SoftTimeLimitExceeded, TimeLimitExceeded):
            writer.abort()
            return self._fail(
                job, "timeout", f"the job ran past its time limit ({self.settings.task_soft_time_limit} s)"
            )
        except torch.cuda.OutOfMemoryError as exc:
            writer.abort()
            return self._fail(job, "out_of_memory", str(exc).splitlines()[0])
        except StorageError as exc:  # e.g. the upload of the finished video to S3
            writer.abort()
            return self._fail(job, "storage_error", str(exc))
        except Exception as exc:
            writer.abort()
            logger.exception("generation failed")
            return self._fail(job, "internal_error", f"{type(exc).__name__}: {exc}")

        self._save_thumbnail(job_id)
        timings = {k: float(v) for k, v in dict(result.get("seconds", {})).items()}  # type: ignore[call-overload]
        for stage, seconds in timings.items():
            metrics.observe_stage(stage, seconds)
        now = int(time.time())
        store.update(
            job_id,
            status=JobStatus.COMPLETED,
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

    def _fail(self, job: Job, code: str, message: str) -> str:
        now = int(time.time())
        self.store.update(
            job.id,
            status=JobStatus.FAILED,
            error_code=code,
            error_message=message,
            completed_at=now,
            expires_at=now + self.settings.job_ttl_seconds,
        )
        metrics.job_finished(job.model, JobStatus.FAILED)
        logger.warning("job failed", extra={"error_code": code, "error_message": message})
        self._notify(job.id)
        return "failed"

    def _finish_cancelled(self, job_id: str, message: str) -> None:
        written, job = self.store.transition(
            job_id,
            [JobStatus.QUEUED, JobStatus.IN_PROGRESS],
            status=JobStatus.CANCELLED,
            error_code="cancelled",
            error_message=message,
            completed_at=int(time.time()),
        )
        try:
            self.storage.delete(job_id)
        except StorageError:
            logger.exception("could not delete a cancelled job's files")
        if written and job is not None:
            metrics.job_finished(job.model, JobStatus.CANCELLED)
            logger.info("job cancelled", extra={"job_id": job_id})
            self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        """The job's webhook, if it asked for one (service.webhooks delivers in the background)."""
        job = self.store.get(job_id)
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


def _memory(pipeline: VideoPipeline | None) -> dict[str, int]:
    if pipeline is not None and pipeline.device.type == "cuda":
        device = pipeline.device
        return {
            "allocated": torch.cuda.memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device),
            "peak_allocated": torch.cuda.max_memory_allocated(device),
        }
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return {"process_rss": pages * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, ValueError, IndexError):
        return {}


# --- Celery wiring ---------------------------------------------------------------------------------

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, loading the model on first use (prefork children load it at start)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            rt = WorkerRuntime(get_settings())
            rt.load()
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
    written, job = store.transition(
        job_id,
        [JobStatus.QUEUED, JobStatus.IN_PROGRESS],
        status=JobStatus.FAILED,
        error_code="timeout",
        error_message=f"the job ran past its hard time limit ({settings.task_hard_time_limit} s)",
        completed_at=int(time.time()),
    )
    if written and job is not None:
        metrics.job_finished(job.model, JobStatus.FAILED)
    store.drop_claim(job_id)


@shared_task(name=TASK_NAME, ignore_result=True)
def generate(job_id: str) -> str:
    with job_context(job_id):
        return runtime().run(job_id)
