"""Fixtures for the service tests: a real redis-server on a free port in a tmp dir, real Celery worker
processes on the tiny bundle, started with the same launcher code `hyv serve` uses.

    service_settings   Settings pointing at them (Redis db 0, data under a tmp dir)
    worker             the shared worker process (ready: model loaded)
    store / storage    JobStore (the job store's parts) / LocalStorage on those settings
    submit(...)        create + enqueue a job the way the API does; returns the Job
    cluster(...)       a separate Redis db and its own workers with overridden settings (for the
                       visibility-timeout and kill tests)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before anything imports prometheus_client: every process of the test session (this one, the
# workers) writes its metrics here, so the API's /metrics sees the workers' counters.
# (tests/conftest.py normally chose it already, for the whole session.)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hyv-metrics-"))
_METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
os.environ.setdefault("OMP_NUM_THREADS", "1")

import redis  # noqa: E402

from hyv.engine.bundle import init_random_bundle, save_bundle  # noqa: E402
from hyv.service.celery_app import enqueue  # noqa: E402
from hyv.service.job_model import Job  # noqa: E402
from hyv.service.job_store import JobStore  # noqa: E402
from hyv.service.launcher import RedisServer, start_worker, stop_worker, wait_for_workers  # noqa: E402
from hyv.service.settings import Settings  # noqa: E402
from hyv.service.storage import LocalStorage  # noqa: E402

MODEL = "hyv-tiny"
WEBHOOK_SECRET = "test-webhook-secret"
WORKER_READY_TIMEOUT_S = 120.0


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.02) -> Any:
    """Poll until predicate() is truthy; returns its value or fails the test with a clear message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, or a process reaped while its stat is read, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(scope="session")
def service_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def tiny_bundle(service_tmp: Path) -> Path:
    """The tiny bundle, with a higher step ceiling so tests can make a job last seconds."""
    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(
        bundle.spec.limits, max_steps=1000, max_width=128, max_height=128, max_frames=17
    )
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    return save_bundle(bundle, service_tmp / "bundle")


@pytest.fixture(scope="session")
def redis_server(service_tmp: Path) -> Iterator[RedisServer]:
    # Databases 1-15 are the tests' own (a private one each); cluster() takes fresh ones above them.
    with RedisServer(service_tmp / "redis", persist=False, databases=64) as server:
        yield server


def make_settings(redis_url: str, data_dir: Path, weights: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "data_dir": data_dir,
        "weights": weights,
        "model_name": MODEL,
        "device": "cpu",
        "dtype": "fp32",
        "worker_heartbeat_seconds": 0.25,
        "job_lease_seconds": 1.5,
        "rate_limit_per_minute": 0,
        "webhook_secret": WEBHOOK_SECRET,
        # The tests' webhook receivers listen on loopback, which the webhook policy refuses unless
        # the operator allows it.
        "webhook_allowed_hosts": ["127.0.0.1"],
        # Every step written: the tests that follow a job step by step read the live step. The
        # throttled default (0.1 s) has its own tests (test_worker_signals.py).
        "progress_interval_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def service_settings(redis_server: RedisServer, service_tmp: Path, tiny_bundle: Path) -> Settings:
    return make_settings(redis_server.url, service_tmp / "data", tiny_bundle)


@pytest.fixture(scope="session")
def worker(service_settings: Settings, service_tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert service_settings.redis_url
    process = start_worker(service_settings, "shared", log_path=service_tmp / "worker-shared.log")
    try:
        wait_for_workers(service_settings.redis_url, MODEL, 1, WORKER_READY_TIMEOUT_S)
        yield process
    finally:
        stop_worker(process)


@pytest.fixture
def store(service_settings: Settings) -> JobStore:
    assert service_settings.redis_url
    return JobStore.connect(redis.Redis.from_url(service_settings.redis_url))


@pytest.fixture
def storage(service_settings: Settings) -> LocalStorage:
    return LocalStorage(service_settings.data_dir)


def submit_job(
    store: JobStore,
    settings: Settings,
    owner: str = "anonymous",
    webhook_url: str | None = None,
    **request: Any,
) -> Job:
    """What POST /v1/videos does once the request is valid: store the job, then enqueue it."""
    request.setdefault("prompt", "a red circle moving right")
    job = Job(
        owner=owner,
        webhook_url=webhook_url,
        model=settings.model_name,
        request=request,
        prompt=request["prompt"],
        num_frames=request.get("num_frames") or 0,
    )
    store.jobs.create(job)
    enqueue(job, settings)
    return job


@pytest.fixture
def submit(store: JobStore, service_settings: Settings, worker: Any) -> Callable[..., Job]:
    def _submit(**request: Any) -> Job:
        return submit_job(store, service_settings, **request)

    return _submit


@dataclasses.dataclass
class Cluster:
    settings: Settings
    store: JobStore
    workers: list[subprocess.Popen[bytes]]
    logs: Path

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        process = start_worker(self.settings, name, log_path=self.logs / f"worker-{name}.log")
        self.workers.append(process)
        return process

    def submit(self, **request: Any) -> Job:
        return submit_job(self.store, self.settings, **request)


_next_db = iter(range(16, 64))


@pytest.fixture
def cluster(redis_server: RedisServer, tiny_bundle: Path, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """cluster(workers=2, **settings overrides): a fresh Redis db with its own worker processes."""
    made: list[Cluster] = []

    def _make(workers: int = 1, **overrides: Any) -> Cluster:
        url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_next_db)}"
        settings = make_settings(url, tmp_path / "data", tiny_bundle, **overrides)
        made.append(Cluster(settings, JobStore.connect(redis.Redis.from_url(url)), [], tmp_path))
        for index in range(workers):
            made[-1].add_worker(f"w{index + 1}")
        wait_for_workers(url, MODEL, workers, WORKER_READY_TIMEOUT_S)
        return made[-1]

    yield _make
    for c in made:
        for process in c.workers:
            stop_worker(process, grace_s=5.0)
