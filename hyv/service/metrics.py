"""Prometheus metrics, correct across processes (uvicorn workers, Celery pool processes).

Counters and histograms use prometheus-client's multiprocess mode: every process writes its own
files under PROMETHEUS_MULTIPROC_DIR, and `render_metrics` merges them. State that lives in Redis
(queue depth, workers ready/busy, their memory) is read from Redis at scrape time, so it is right
whichever process answers the scrape.

    setup_metrics(settings)   once per process, by whoever starts it (the `hyv serve` / `hyv worker`
                              launchers, `create_app`, the Celery worker's start, the exporter),
                              before its first metric: the folder is $PROMETHEUS_MULTIPROC_DIR,
                              else settings.data_dir / "metrics"; it is created and exported, so
                              child processes (forked or started) write there too
    API:    observe_request(route, method, code, seconds); job_submitted(model, mode);
            job_finished(model, "cancelled") for a job cancelled while queued (hyv.service.job_cancels)
    worker: job_finished(model, status); observe_queue_wait / observe_stage / observe_denoise_step /
            observe_first_byte
    /metrics: body, content_type = render_metrics(jobs, workers, settings)

Importing this module changes nothing (no variable, no folder): the metric objects are created on
first use, because prometheus-client binds a metric without labels to its value class (in-memory,
or a file in the multiprocess folder) when the metric is created.

Recording a metric never raises: with the disk full (or a file-size limit) prometheus-client cannot
create or grow its files, and that must not fail the job or the request being counted (logged
at most once a minute instead).
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from hyv.service.settings import Settings, get_settings, queue_name

if TYPE_CHECKING:
    from hyv.service.job_records import JobRecords
    from hyv.service.worker_registry import WorkerRegistry

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")
_COMPLAINT_INTERVAL_S = 60.0
_last_complaint = [-_COMPLAINT_INTERVAL_S]
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The entry of a worker beat's "memory" (hyv.service.job_memory.memory_usage) that is the process's
# RSS; every other entry is GPU memory.
RESIDENT_MEMORY_KIND = "process_rss"
# prometheus-client's files start with 8 bytes (used size + padding); an empty one was never written.
_MIN_METRICS_FILE_BYTES = 8


def setup_metrics(source: Settings | Path) -> Path:
    """Point this process's metrics at the multiprocess folder, created, and export it as
    PROMETHEUS_MULTIPROC_DIR (for child processes too). `source`: the folder itself, or settings
    (then $PROMETHEUS_MULTIPROC_DIR when set, else settings.metrics_dir). Returns the folder.

    Call it before the process records its first metric; calling it again for the same folder
    is harmless, for another one after metrics were recorded is an error (their files stay where
    they were opened)."""
    if isinstance(source, Path):
        path = source
    else:
        current = os.environ.get(MULTIPROC_ENV)
        path = Path(current) if current else source.metrics_dir.resolve()
    with _lock:
        created_in = _state.created_in
        if _state.metrics is not None and (created_in is None or Path(created_in) != path):
            raise RuntimeError(
                f"metrics were already recorded in {created_in!r}: setup_metrics({str(path)!r}) "
                "must come before the process's first metric"
            )
        path.mkdir(parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = str(path)
        values.ValueClass = values.get_value_class()  # in case prometheus_client was imported earlier
        _state.directory = path
    return path


def multiproc_dir() -> Path:
    """The folder setup_metrics chose (else $PROMETHEUS_MULTIPROC_DIR)."""
    if _state.directory is not None:
        return _state.directory
    current = os.environ.get(MULTIPROC_ENV)
    if not current:
        raise RuntimeError("no metrics folder: call setup_metrics first (or set PROMETHEUS_MULTIPROC_DIR)")
    return Path(current)


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


class _Metrics:
    """Every counter and histogram of the service (created together, on first use)."""

    def __init__(self) -> None:
        self.requests = Counter("hyv_requests_total", "HTTP requests.", ["route", "method", "code"])
        self.request_duration = Histogram(
            "hyv_request_duration_seconds",
            "HTTP request duration (until the response starts for streams).",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.jobs_submitted = Counter("hyv_jobs_submitted_total", "Jobs accepted.", ["model", "mode"])
        self.jobs_finished = Counter(
            "hyv_jobs_finished_total", "Jobs that reached a final state.", ["model", "status"]
        )
        self.queue_wait = Histogram(
            "hyv_job_queue_wait_seconds", "From submission to a worker starting the job.", buckets=JOB_BUCKETS
        )
        self.stage_seconds = Histogram(
            "hyv_job_stage_seconds", "Seconds per pipeline stage of a job.", ["stage"], buckets=JOB_BUCKETS
        )
        self.denoise_step = Histogram(
            "hyv_denoise_step_seconds", "Seconds per denoising step.", buckets=STEP_BUCKETS
        )
        self.first_byte = Histogram(
            "hyv_time_to_first_byte_seconds",
            "From submission to the first playable MP4 fragment in storage.",
            buckets=JOB_BUCKETS,
        )


@dataclass
class _State:
    directory: Path | None = None  # what setup_metrics chose
    metrics: _Metrics | None = None
    created_in: str | None = None  # PROMETHEUS_MULTIPROC_DIR when the metrics were created


_state = _State()
_lock = threading.Lock()


def _metrics() -> _Metrics:
    if _state.metrics is None:
        with _lock:
            if _state.metrics is None:
                _state.created_in = os.environ.get(MULTIPROC_ENV)
                _state.metrics = _Metrics()
    return _state.metrics


def all_metrics() -> list[MetricWrapperBase]:
    """Every counter and histogram this module records (for checks of what the service exports)."""
    return list(vars(_metrics()).values())


@_never_raises
def observe_request(route: str, method: str, code: int, seconds: float) -> None:
    metrics = _metrics()
    metrics.requests.labels(route, method, str(code)).inc()
    metrics.request_duration.labels(route, method).observe(seconds)


@_never_raises
def job_submitted(model: str, mode: str) -> None:
    """mode: "t2v" or "i2v"."""
    _metrics().jobs_submitted.labels(model, mode).inc()


@_never_raises
def job_finished(model: str, status: str) -> None:
    """Called once per job, by the process whose write made it final (that write is guarded, so
    no other process can finish the same job again)."""
    _metrics().jobs_finished.labels(model, status).inc()


@_never_raises
def observe_queue_wait(seconds: float) -> None:
    _metrics().queue_wait.observe(max(0.0, seconds))


@_never_raises
def observe_stage(stage: str, seconds: float) -> None:
    _metrics().stage_seconds.labels(stage).observe(seconds)


@_never_raises
def observe_denoise_step(seconds: float) -> None:
    _metrics().denoise_step.observe(seconds)


@_never_raises
def observe_first_byte(seconds: float) -> None:
    _metrics().first_byte.observe(max(0.0, seconds))


def clear_multiproc_dir() -> None:
    """Remove the files of earlier runs (call once, after setup_metrics and before the other
    processes of this run start).

    This process's own files are kept: once it has recorded a metric they are mapped, and a file
    deleted while mapped loses every sample written to it afterwards."""
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
    """Queue depth, workers ready/busy and their memory, read from Redis at scrape time: the GPU
    memory summed over workers by kind, each worker's resident memory on its own."""

    def __init__(self, store: RedisState, models: list[str]) -> None:
        self.store = store
        self.models = models

    def collect(self) -> Iterator[Metric]:
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
        gpu_memory: dict[str, float] = {}
        resident = GaugeMetricFamily(
            "hyv_worker_resident_memory_bytes",
            "Resident memory (RSS) of each worker's job process.",
            labels=["worker"],
        )
        for w in workers:
            for kind, amount in (w.get("memory") or {}).items():
                if kind == RESIDENT_MEMORY_KIND:
                    resident.add_metric([str(w.get("hostname"))], float(amount))
                else:
                    gpu_memory[kind] = gpu_memory.get(kind, 0.0) + float(amount)
        gpu = GaugeMetricFamily(
            "hyv_gpu_memory_bytes",
            "GPU memory of the workers, summed (kind: allocated, reserved, peak_allocated).",
            labels=["kind"],
        )
        for kind, amount in sorted(gpu_memory.items()):
            gpu.add_metric([kind], amount)
        yield gpu
        yield resident


class _ReadableFilesCollector(multiprocess.MultiProcessCollector):
    """prometheus-client's merge of every process's files, minus the files a process could not
    write (a full disk or a file-size limit leaves an empty one): one such process must not take
    /metrics down with it."""

    def collect(self) -> Any:
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= _MIN_METRICS_FILE_BYTES:
                    files.append(path)
                    continue
            except OSError:  # removed between the listing and now
                continue
            logger.warning("skipping the metrics file %s: it holds no data", path)
        return self.merge(files, accumulate=True)


def render_metrics(
    jobs: JobRecords | None = None,
    workers: WorkerRegistry | None = None,
    settings: Settings | None = None,
    models: list[str] | None = None,
) -> tuple[bytes, str]:
    """(body, content type) for GET /metrics: every process's counters and histograms merged, this
    process's own process_* series (multiprocess mode leaves them out), plus the Redis-held gauges
    when the job records and the worker registry are given (the queue depth of each of `models`,
    default the settings' model_name)."""
    registry = CollectorRegistry()
    _ReadableFilesCollector(registry, path=str(multiproc_dir()))
    ProcessCollector(registry=registry)
    if jobs is not None and workers is not None:
        models = models or [(settings or get_settings()).model_name]
        registry.register(RedisStateCollector(JobStoreState(jobs, workers), models))
    return generate_latest(registry), CONTENT_TYPE_LATEST
