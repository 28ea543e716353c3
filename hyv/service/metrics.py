"""Prometheus metrics, correct across processes (uvicorn workers, Celery pool processes).

Counters and histograms use prometheus-client's multiprocess mode: every process writes its own
files under PROMETHEUS_MULTIPROC_DIR (settings.data_dir / "metrics" unless the variable is set;
`hyv serve` sets it for its children and clears stale files at start), and `render_metrics`
merges them. State that lives in Redis (queue depth, workers ready/busy, their memory) is read
from Redis at scrape time, so it is right whichever process answers the scrape.

    API:    observe_request(route, method, code, seconds); job_submitted(model, mode)
    worker: job_finished(model, status); observe_queue_wait / observe_stage / observe_denoise_step /
            observe_first_byte
    /metrics: body, content_type = render_metrics(jobs, workers, settings)

Recording a metric never raises: with the disk full (or a file-size limit) prometheus-client cannot
create or grow its files, and that must not fail the job or the request being counted (logged
at most once a minute instead).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol

from hyv.service.settings import get_settings


def multiproc_dir() -> Path:
    """The multiprocess directory (created), exported as PROMETHEUS_MULTIPROC_DIR."""
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(current) if current else get_settings().metrics_dir
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


multiproc_dir()  # must precede the first metric: prometheus-client picks its value class then

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

if TYPE_CHECKING:
    from hyv.service.job_records import JobRecords
    from hyv.service.settings import Settings
    from hyv.service.worker_registry import WorkerRegistry

values.ValueClass = values.get_value_class()  # in case prometheus_client was imported earlier

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")
_COMPLAINT_INTERVAL_S = 60.0
_last_complaint = [-_COMPLAINT_INTERVAL_S]


def _never_raises(record: Callable[_P, None]) -> Callable[_P, None]:
    @functools.wraps(record)
    def safe(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception as exc:
            now = time.monotonic()
            if now - _last_complaint[0] >= _COMPLAINT_INTERVAL_S:
                _last_complaint[0] = now
                logger.warning("metric %s not recorded: %s: %s", record.__name__, type(exc).__name__, exc)

    return safe


STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

REQUESTS = Counter("hyv_requests_total", "HTTP requests.", ["route", "method", "code"])
REQUEST_DURATION = Histogram(
    "hyv_request_duration_seconds",
    "HTTP request duration (until the response starts for streams).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_SUBMITTED = Counter("hyv_jobs_submitted_total", "Jobs accepted.", ["model", "mode"])
JOBS_FINISHED = Counter("hyv_jobs_finished_total", "Jobs that reached a final state.", ["model", "status"])
QUEUE_WAIT = Histogram(
    "hyv_job_queue_wait_seconds", "From submission to a worker starting the job.", buckets=JOB_BUCKETS
)
STAGE_SECONDS = Histogram(
    "hyv_job_stage_seconds", "Seconds per pipeline stage of a job.", ["stage"], buckets=JOB_BUCKETS
)
DENOISE_STEP = Histogram("hyv_denoise_step_seconds", "Seconds per denoising step.", buckets=STEP_BUCKETS)
FIRST_BYTE = Histogram(
    "hyv_time_to_first_byte_seconds",
    "From submission to the first playable MP4 fragment in storage.",
    buckets=JOB_BUCKETS,
)


@_never_raises
def observe_request(route: str, method: str, code: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(code)).inc()
    REQUEST_DURATION.labels(route, method).observe(seconds)


@_never_raises
def job_submitted(model: str, mode: str) -> None:
    """mode: "t2v" or "i2v"."""
    JOBS_SUBMITTED.labels(model, mode).inc()


@_never_raises
def job_finished(model: str, status: str) -> None:
    JOBS_FINISHED.labels(model, status).inc()


@_never_raises
def observe_queue_wait(seconds: float) -> None:
    QUEUE_WAIT.observe(max(0.0, seconds))


@_never_raises
def observe_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(seconds)


@_never_raises
def observe_denoise_step(seconds: float) -> None:
    DENOISE_STEP.observe(seconds)


@_never_raises
def observe_first_byte(seconds: float) -> None:
    FIRST_BYTE.observe(max(0.0, seconds))


def mark_process_dead(pid: int) -> None:
    """Call when a worker process exits (its live-gauge files are dropped)."""
    multiprocess.mark_process_dead(pid, str(multiproc_dir()))


def clear_multiproc_dir() -> None:
    """Remove the files of earlier runs (call once, before the other processes of this run start).

    This process's own files are kept: importing `hyv.service.metrics` already mapped them, and a
    file deleted while mapped loses every sample written to it afterwards."""
    own = f"_{os.getpid()}.db"
    for path in multiproc_dir().glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


class RedisState(Protocol):
    """What RedisStateCollector reads: a model's queue depth and the live workers."""

    def queue_depth(self, model: str) -> int: ...

    def workers(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class JobStoreState:
    """RedisState from the job store's parts: the job records (queues) and the worker registry."""

    jobs: JobRecords
    registry: WorkerRegistry

    def queue_depth(self, model: str) -> int:
        return self.jobs.queue_depth(model)

    def workers(self) -> list[dict[str, Any]]:
        return self.registry.live()


class RedisStateCollector(Collector):
    """Queue depth, workers ready/busy and their memory, read from Redis at scrape time."""

    def __init__(self, store: RedisState, models: list[str]) -> None:
        self.store = store
        self.models = models

    def collect(self) -> Iterator[Metric]:
        from hyv.service.settings import queue_name

        depth = GaugeMetricFamily("hyv_queue_depth", "Jobs waiting in a model's queue.", labels=["queue"])
        for model in self.models:
            depth.add_metric([queue_name(model)], self.store.queue_depth(model))
        yield depth
        workers = self.store.workers()
        ready = GaugeMetricFamily("hyv_workers_ready", "Workers with their model loaded.")
        ready.add_metric([], sum(1 for w in workers if w.get("ready")))
        yield ready
        busy = GaugeMetricFamily("hyv_worker_busy", "1 while the worker runs a job.", labels=["worker"])
        for w in workers:
            busy.add_metric([str(w.get("hostname"))], 1.0 if w.get("busy_job") else 0.0)
        yield busy
        memory: dict[str, float] = {}
        for w in workers:
            for kind, amount in (w.get("memory") or {}).items():
                memory[kind] = memory.get(kind, 0.0) + float(amount)
        gpu = GaugeMetricFamily(
            "hyv_gpu_memory_bytes",
            "Accelerator memory of the workers, summed (kind: allocated, reserved, peak_allocated; "
            "process_rss on CPU-only workers).",
            labels=["kind"],
        )
        for kind, amount in sorted(memory.items()):
            gpu.add_metric([kind], amount)
        yield gpu


def render_metrics(
    jobs: JobRecords | None = None, workers: WorkerRegistry | None = None, settings: Settings | None = None
) -> tuple[bytes, str]:
    """(body, content type) for GET /metrics: every process's counters and histograms merged, plus
    the Redis-held gauges when the job records and the worker registry are given."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir()))
    if jobs is not None and workers is not None:
        models = [(settings or get_settings()).model_name]
        registry.register(RedisStateCollector(JobStoreState(jobs, workers), models))
    return generate_latest(registry), CONTENT_TYPE_LATEST
