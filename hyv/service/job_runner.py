"""Running one job in a worker's pool process, from its delivery to its final state.

For each delivery of "hyv.generate", `JobRunner.run`:

1. claims the job (hyv.service.job_claims.JobClaims.claim): a finished job is not rerun, a job
   another live worker holds is dropped (Redis redelivers unacknowledged messages after the
   visibility timeout even while their worker is alive), a job cancelled while queued never starts;
2. streams the fragmented MP4 from VideoPipeline.stream into storage (`{id}.mp4.part`, renamed to
   `{id}.mp4` at the end; with S3 storage uploaded first), with stage/step/progress written to the
   job records as they happen (hyv.service.running_job.ProgressWriter);
3. checks for a cancel after every denoising step and decoded tile (the pipeline raises
   GenerationCancelledError) by reading a local event that a pub/sub message sets
   (hyv.service.running_job.CancelWatch: no Redis round trip per step), and stops if it lost its
   claim (the process's beat renews it: `renew_claim`), or hands the job back to the front of its
   queue when the worker is stopping and the job's grace ran out (hyv.service.worker_shutdown);
4. renews its claim before publishing the video (a run whose lease lapsed unnoticed drops its
   output there), writes a PNG thumbnail of the first frame and the final state, which
   JobRecords.finish writes only while this run's token still holds the claim (one Lua script): a
   run that lost the job to another worker never ends it, it logs and returns `lost`.

Every failure goes through `_fail` with a hyv.service.job_failures.Failure: `redis_unavailable` is
not written (the claim lapses and the job is requeued), `out_of_memory` gives the memory back
first, every other code is the job's failed state. The job's webhook goes out when it ends.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import av
import torch
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from PIL import Image

from hyv.engine.limits import GenerationPlan
from hyv.engine.pipeline import CancelSignal, GenerationCancelledError, Progress, ProgressFn
from hyv.engine.request import GenerationRequest
from hyv.service import metrics, webhooks
from hyv.service.celery_app import TASK_NAME, celery_for
from hyv.service.job_failures import Failure, classify_failure
from hyv.service.job_memory import release_memory
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_records import JobRecords
from hyv.service.job_store import JobStore
from hyv.service.log import repeats
from hyv.service.queue_front import move_to_front
from hyv.service.run_tokens import run_token
from hyv.service.running_job import CancelWatch, HandBackDeadline, ProgressWriter, RunningJob
from hyv.service.settings import Settings, queue_name
from hyv.service.storage import Storage, StorageError, VideoWriter

logger = logging.getLogger(__name__)

# A job whose worker group failed under it runs at most this often (it is requeued in between).
GROUP_FAULT_ATTEMPTS = 2


class ServedPipeline(Protocol):
    """What a run drives: a VideoPipeline, or a worker group's rank 0 (hyv.service.worker_group)."""

    @property
    def device(self) -> torch.device: ...

    def plan(self, request: GenerationRequest) -> GenerationPlan: ...

    def stream(
        self,
        request: GenerationRequest,
        on_progress: ProgressFn | None = None,
        cancel: CancelSignal = None,
        result: dict[str, object] | None = None,
    ) -> Iterator[bytes]: ...


class JobRunner:
    """Claims and runs the jobs delivered to one pool process, one at a time."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        hostname: str,
        on_busy_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.jobs = store.jobs
        self.claims = store.claims
        self.storage = storage
        self.hostname = hostname
        self.running: RunningJob | None = None
        self.cancels = CancelWatch(store.cancels, hostname, lambda: self.running)
        # Set when the worker is asked to stop (hyv.service.worker_shutdown): past it, the run stops
        # at its next step and hands the job back.
        self.hand_back = HandBackDeadline()
        self._on_busy_change = on_busy_change  # the heartbeat: it shows the job this process runs

    def renew_claim(self) -> None:
        """Extend the running job's lease (the process's beat calls this); a claim another worker
        took stops the run at its next step."""
        running = self.running
        if running and not self.claims.renew(running.job_id, running.token, self.settings.job_lease_seconds):
            # Said once a minute at most: the beat renews every few seconds until the run stops.
            repeats.log(
                logger, logging.ERROR, "lost the claim on the running job", extra={"job_id": running.job_id}
            )
            running.lost.set()

    def run(
        self, job_id: str, pipeline: ServedPipeline, task_id: str | None = None, model: str | None = None
    ) -> str:
        """Claim and run one job on `pipeline` (the worker's model `model`, which the run log's end
        entry names); returns what happened (for logs and tests). The claim's token
        ends with the delivery's Celery task id, so the main process can fail this run (and only
        this run) if the pool process is killed at the hard time limit (fail_past_hard_limit)."""
        token = run_token(self.hostname, task_id or uuid.uuid4().hex)
        claim = self.claims.claim(job_id, token, self.settings.job_lease_seconds)
        self.claims.log_run(job_id, "delivery", outcome=claim, worker=self.hostname)
        if claim in ("missing", "finished", "held"):
            logger.info(f"dropping delivery: job {claim}", extra={"job_id": job_id, "claim": claim})
            return claim
        if claim == "cancel":
            outcome = self._cancel(job_id, token, "cancelled before it started")
            self.claims.release(job_id, token)
            return outcome
        current = self.jobs.get(job_id)
        assert current is not None
        now = time.time()
        written, job = self.jobs.transition(
            job_id,
            [JobStatus.QUEUED, JobStatus.IN_PROGRESS],
            claim_token=token,
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
        running = self.running = RunningJob(job_id, token, hand_back=self.hand_back)
        running.rendered["model"] = model or self.settings.model_name
        self.cancels.check_flag(running)  # cancelled between the claim and now: no message reached us
        self._on_busy_change()
        outcome = "error"
        try:
            outcome = self._generate(job, running, pipeline)
            return outcome
        finally:
            self.claims.log_run(job_id, "end", outcome=outcome, worker=self.hostname, **running.summary())
            self.running = None
            self.claims.release(job_id, token)
            self._on_busy_change()

    def _generate(self, job: Job, running: RunningJob, pipeline: ServedPipeline) -> str:
        job_id = job.id
        try:
            request = GenerationRequest(
                **job.request,
                image=self.storage.load_input_image(job_id),
                video=self.storage.load_input_video(job_id) if job.operation != "create" else None,
            )
            plan = pipeline.plan(request)
            running.rendered.update(steps=plan.steps, guidance=plan.guidance)
        except StorageError as exc:
            return self._fail(job, running.token, Failure("storage_error", str(exc)), pipeline)
        except (ValueError, TypeError) as exc:
            return self._fail(job, running.token, Failure("invalid_request", str(exc)), pipeline)

        last_step = [time.perf_counter()]
        progress_writer = ProgressWriter(self.jobs, running, self.settings.progress_interval_s)

        def on_progress(progress: Progress) -> None:
            now = time.perf_counter()
            if progress.stage == "denoise":
                metrics.observe_denoise_step(now - last_step[0])
            last_step[0] = now
            progress_writer.report(progress.stage, progress.step, progress.total, progress.fraction)

        try:
            writer = self.storage.open_writer(job_id)
        except (StorageError, OSError) as exc:  # the message says why, without the server's paths
            return self._fail(job, running.token, classify_failure(exc), pipeline)
        result: dict[str, Any] = {}
        chunks = 0
        failure: Failure | None = None
        try:
            for chunk in pipeline.stream(request, on_progress, running.stop_requested, result):
                writer.write(chunk)
                chunks += 1
                if chunks == 2:  # the first media fragment: the video can start playing
                    metrics.observe_first_byte(time.time() - job.created_at)
                progress_writer.note(content_bytes=writer.bytes_written)
            # Publish only while the job is still ours (renewing the lease covers the rename, the
            # upload and the final write): a run whose lease lapsed unnoticed ends here.
            if not self.claims.renew(job_id, running.token, self.settings.job_lease_seconds):
                running.lost.set()
                writer.abandon()
                return self._lost(job_id, "before publishing its video")
            writer.close()
        except GenerationCancelledError:
            if running.lost.is_set():  # another worker owns the job now: leave its files alone
                writer.abandon()
                return self._lost(job_id, "before publishing its video")
            writer.abort()
            if running.hand_back.due() and not running.cancel.is_set():
                return self._hand_back(job_id, running.token)
            # The cancelled record shows where it stopped (the last step, even if not yet written).
            unwritten = progress_writer.unwritten()
            return self._cancel(job_id, running.token, "cancelled while running", **unwritten)
        except (SoftTimeLimitExceeded, TimeLimitExceeded):
            writer.abort()
            limit = f"the job ran past its time limit ({self.settings.task_soft_time_limit} s)"
            failure = Failure("timeout", limit)
        except Exception as exc:  # out_of_memory, storage_error (disk full, S3 upload)... or a bug
            failure = classify_failure(exc)
            _abort_quietly(writer)
            if failure.code == "internal_error":
                logger.exception("generation failed")
        if failure is not None:  # handled here, once the exception and its frames (tensors) are gone
            return self._fail(job, running.token, failure, pipeline, **progress_writer.unwritten())

        self._save_thumbnail(job_id)
        timings = {k: float(v) for k, v in dict(result.get("seconds", {})).items()}  # type: ignore[call-overload]
        for stage, seconds in timings.items():
            metrics.observe_stage(stage, seconds)
        now = int(time.time())
        written, _ = self.jobs.finish(
            job_id,
            running.token,
            JobStatus.COMPLETED,
            progress=100,
            stage="encode",
            completed_at=now,
            expires_at=now + self.settings.job_ttl_seconds,
            timings=timings,
            step_cache=result.get("cache"),
            content_bytes=writer.bytes_written,
            num_frames=plan.output_frames,
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

    def _fail(self, job: Job, token: str, failure: Failure, pipeline: ServedPipeline, **progress: Any) -> str:
        """The one way a run fails its job. `progress`: the last stage/step/progress not yet
        written. Nothing is written when Redis is away (the claim lapses and the job is requeued:
        it is not the job's fault); after an out-of-memory the job's memory is given back first;
        else the failed final state, if the claim is still ours."""
        if failure.code == "redis_unavailable":
            logger.error("Redis unreachable: the job will be requeued", extra={"error": failure.message})
            return "redis_unavailable"
        if failure.code == "worker_group_failed" and job.attempts < GROUP_FAULT_ATTEMPTS:
            self.claims.release(job.id, token)
            if requeue_own_job(self.jobs, self.settings, job.id):
                logger.warning("worker group failed: job requeued", extra={"error": failure.message})
                return "requeued"
            return self._lost(job.id, "while requeueing it")
        if failure.code == "out_of_memory":
            release_memory(pipeline.device)
        now = int(time.time())
        written, _ = self.jobs.finish(
            job.id,
            token,
            JobStatus.FAILED,
            **progress,
            error_code=failure.code,
            error_message=failure.message,
            completed_at=now,
            expires_at=now + self.settings.job_ttl_seconds,
        )
        if not written:
            return self._lost(job.id, f"while failing it ({failure.code}: {failure.message})")
        metrics.job_finished(job.model, JobStatus.FAILED)
        logger.warning("job failed", extra={"error_code": failure.code, "error_message": failure.message})
        self._notify(job.id)
        return "failed"

    def _hand_back(self, job_id: str, token: str) -> str:
        """The worker is stopping and the job ran past its grace: the claim given up, the job queued
        again at the front of its queue (no stale in_progress left behind), for the next worker."""
        self.claims.release(job_id, token)
        if requeue_own_job(self.jobs, self.settings, job_id):
            logger.warning(
                "worker stopping: job handed back to the front of its queue", extra={"job_id": job_id}
            )
            return "requeued"
        return self._lost(job_id, "while handing it back")

    def _cancel(self, job_id: str, token: str, message: str, **progress: Any) -> str:
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


REQUEUE_LOCK_MS = 30_000  # a holder killed mid-requeue blocks the job's next requeue this long


def requeue_job(jobs: JobRecords, settings: Settings, job_id: str) -> bool:
    """An in-progress job that no run holds any more: back to queued at the front of its model's
    queue (it runs before the jobs submitted after it started: hyv.service.queue_front), if it still
    is in progress and unclaimed. True if requeued.

    The message goes out before the record says queued: a process killed between the two leaves a
    job in progress with a message (the next delivery claims and runs it; a later requeue's copy
    is dropped by the claim), never a queued job without one, which nothing would revive but the
    broker's visibility timeout (the dead run's delivery sits in the unacked index, so the queue
    reaper sees it as present). A short lock lets one process at a time do it: the run handing its
    job back and a beat that saw it unclaimed would otherwise both send."""
    lock = jobs.keys.requeue(job_id)
    if not jobs.redis.set(lock, "1", nx=True, px=REQUEUE_LOCK_MS):
        return False
    try:
        job = jobs.get(job_id)
        if job is None or job.status != JobStatus.IN_PROGRESS or jobs.redis.exists(jobs.keys.claim(job_id)):
            return False
        queue = queue_name(job.model)
        celery_for(settings).send_task(TASK_NAME, args=[job_id], queue=queue)
        move_to_front(jobs.redis, queue, job_id)
        written, _ = jobs.transition(
            job_id,
            [JobStatus.IN_PROGRESS],
            require_unclaimed=True,
            queue_front=True,
            status=JobStatus.QUEUED,
            stage=None,
            step=0,
            progress=0,
            content_bytes=0,  # the dead or handed-back run's partial MP4 is not the next run's
        )
        return written
    finally:
        jobs.redis.delete(lock)


REQUEUE_WAIT_S = 5.0  # a beat's requeue takes milliseconds; this bounds a stuck one


def requeue_own_job(
    jobs: JobRecords, settings: Settings, job_id: str, wait_s: float = REQUEUE_WAIT_S
) -> bool:
    """requeue_job for the run giving its own job back (it has just released the claim). A beat
    that saw the job unclaimed in between may hold the requeue lock: then this waits for that
    requeue to finish instead of calling the job lost while its record still says in progress.
    True once the job is queued, whoever queued it."""
    deadline = time.monotonic() + wait_s
    while True:
        if requeue_job(jobs, settings, job_id):
            return True
        locked = jobs.redis.exists(jobs.keys.requeue(job_id))  # read before the status, not after
        job = jobs.get(job_id)
        if job is not None and job.status == JobStatus.QUEUED:
            return True
        if not locked or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def fail_past_hard_limit(settings: Settings, job_id: str, task_id: str) -> None:
    """A job whose pool process was killed at the hard time limit: failed (not requeued), and its
    dead run's claim dropped, in one guarded write. Celery's main process calls this (the run itself
    is gone); it fails the job only while the claim is that run's (its token ends with the task id):
    a job requeued or taken by another run since is left to it."""
    assert settings.redis_url
    store = JobStore.from_url(settings.redis_url, settings)
    written, job = store.jobs.fail_dead_run(
        job_id,
        task_id,
        error_code="timeout",
        error_message=f"the job ran past its hard time limit ({settings.task_hard_time_limit} s)",
        completed_at=int(time.time()),
    )
    if written and job is not None:
        metrics.job_finished(job.model, JobStatus.FAILED)
    else:
        logger.warning(
            "a run killed at the hard time limit no longer held its job: left to its new run",
            extra={"job_id": job_id},
        )


def first_frame_png(path: Path) -> bytes:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        image: Image.Image = frame.to_image()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _abort_quietly(writer: VideoWriter) -> None:
    """writer.abort(), logging rather than raising (the disk that failed a write may fail this too)."""
    try:
        writer.abort()
    except Exception:
        logger.exception("could not remove a failed job's partial video")
