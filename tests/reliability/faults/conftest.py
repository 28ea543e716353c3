"""Fixtures for the fault-injection tests: each test module gets its own stack of real processes, so
a fault (Redis restarted, a worker killed, a disk filled) never leaks into another test.

    fault_bundle      the tiny bundle with a high step ceiling (a job can be made to last seconds)
    make_stack(...)   a Stack: its own redis-server (AOF on, so it can be restarted), worker
                      processes started with the launcher code `hyv serve` uses, and optionally the
                      API as a real `hyv serve --workers 0` process

Tests say how many times they injected their fault with `record_faults(n)` (a `faults` property of
the test in pytest's JUnit XML): benchmarks/reliability.py counts them for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyv.engine.bundle import init_random_bundle, save_bundle
from hyv.engine.video_io import read_mp4
from hyv.service.celery_app import enqueue
from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer, free_port, start_worker, stop_worker, wait_for_workers
from hyv.service.settings import Settings

MODEL = "hyv-tiny"
READY_TIMEOUT_S = 120.0
# ~1 s on the tiny model on an idle CPU: long enough to be caught mid-denoise.
MEDIUM = {"width": 64, "height": 64, "num_frames": 9, "steps": 100}
SMALL = {"width": 32, "height": 32, "num_frames": 5, "steps": 2}


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.02) -> Any:
    """Poll until predicate() is truthy; returns its value, or fails the test."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


@pytest.fixture
def record_faults(request: pytest.FixtureRequest) -> Callable[..., None]:
    """record_faults(n, **details): this test injected its fault n times (user properties, which
    pytest writes into its JUnit XML)."""

    def record(count: int, **details: object) -> None:
        request.node.user_properties.append(("faults", count))
        request.node.user_properties.extend(details.items())

    return record


@pytest.fixture(scope="session")
def fault_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle, allowing up to 1000 steps and 128x128x17 (a job of a few hundred MB)."""
    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(
        bundle.spec.limits, max_steps=1000, max_width=128, max_height=128, max_frames=17
    )
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    return save_bundle(bundle, tmp_path_factory.mktemp("fault-bundle") / "hyv-tiny")


@dataclasses.dataclass
class Stack:
    """A redis-server, its workers and (optionally) an API process, all under `root`."""

    root: Path
    redis: RedisServer
    settings: Settings
    store: JobStore
    workers: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    api: subprocess.Popen[bytes] | None = None
    api_port: int = 0

    # --- workers ---------------------------------------------------------------------------------

    def add_worker(self, name: str, wait: bool = True, **overrides: Any) -> subprocess.Popen[bytes]:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        ready_before = self.ready_workers()
        process = start_worker(
            settings,
            name,
            log_path=self.root / f"worker-{name}.log",
            extra_env={"OMP_NUM_THREADS": "1"},  # one thread each: the CPUs are shared
        )
        self.workers[name] = process
        if wait:
            wait_for_workers(self.settings.redis_url or "", MODEL, ready_before + 1, READY_TIMEOUT_S)
        return process

    def ready_workers(self) -> int:
        return sum(1 for w in self.store.workers.live(MODEL) if w.get("ready"))

    def stop_worker(self, name: str, grace_s: float = 10.0) -> None:
        stop_worker(self.workers.pop(name), grace_s=grace_s)

    def pool_pid(self, name: str) -> int:
        """The pid of worker `name`'s pool process (the one holding the model), from /proc."""
        main = self.workers[name].pid

        def child() -> int | None:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == main and fields[0] != "Z":
                        return int(stat.parent.name)
            return None

        pid: int = wait_until(child, 30)
        return pid

    def worker_running(self, job: Job) -> str:
        """The name of the worker whose pool process runs `job` (from the job's `worker` field)."""
        assert job.worker is not None
        child = int(job.worker.rsplit(":", 1)[1])
        stat = Path(f"/proc/{child}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        return next(name for name, process in self.workers.items() if process.pid == parent)

    def worker_log(self, name: str) -> str:
        return (self.root / f"worker-{name}.log").read_text(errors="replace")

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, **request: Any) -> Job:
        """What POST /v1/videos does once a request is valid: store the job, then enqueue it."""
        request.setdefault("prompt", "a red circle moving right")
        job = Job(
            model=MODEL, request=request, prompt=request["prompt"], num_frames=request.get("num_frames", 0)
        )
        self.store.jobs.create(job)
        enqueue(job, self.settings)
        return job

    def finished(self, job_id: str, timeout_s: float = 120.0) -> Job:
        def check() -> Job | None:
            with contextlib.suppress(Exception):  # Redis may be restarting
                job = self.store.jobs.get(job_id)
                return job if job is not None and job.finished else None
            return None

        job: Job = wait_until(check, timeout_s, 0.05)
        return job

    def wait_running(self, job_ids: list[str], count: int, min_step: int = 3, timeout_s: float = 60) -> None:
        """Until `count` of the jobs are in progress, each past denoising step `min_step`."""

        def check() -> bool:
            states = [self.store.jobs.get(job_id) for job_id in job_ids]
            running = [s for s in states if s and s.status == JobStatus.IN_PROGRESS and s.step >= min_step]
            return len(running) >= count

        wait_until(check, timeout_s)

    def wait_stage(self, job_id: str, stages: tuple[str, ...], timeout_s: float = 60) -> None:
        """Until the job is at one of `stages` (or finished)."""

        def check() -> bool:
            job = self.store.jobs.get(job_id)
            return job is not None and (job.stage in stages or job.finished)

        wait_until(check, timeout_s)

    def video_path(self, job_id: str) -> Path:
        return Path(self.settings.data_dir) / "videos" / f"{job_id}.mp4"

    def assert_completed(self, job_id: str, frames: int, timeout_s: float = 120.0) -> Job:
        """The job completed with a valid MP4 of `frames` frames, and no two runs of it overlapped."""
        job = self.finished(job_id, timeout_s)
        assert job.status == JobStatus.COMPLETED, (job.status, job.error_code, job.error_message)
        assert read_mp4(self.video_path(job_id)).shape[0] == frames
        assert_never_concurrent(self.ended_runs(job_id))
        return job

    def ended_runs(self, job_id: str) -> list[dict[str, Any]]:
        """The job's delivery log once the run that finished it logged its end (just after the
        final state; duplicate deliveries dropped later may follow)."""

        def check() -> list[dict[str, Any]] | None:
            runs = self.store.claims.runs(job_id)
            return runs if any(r["event"] == "end" and r["outcome"] == "completed" for r in runs) else None

        found: list[dict[str, Any]] = wait_until(check, 15)
        return found

    # --- Redis -----------------------------------------------------------------------------------

    def restart_redis(self, how: str = "sigterm", down_s: float = 0.5) -> None:
        """Stop redis-server (SIGTERM: a clean shutdown; SIGKILL: a crash), wait, start it again on
        the same port and data dir (the AOF brings the data back)."""
        process = self.redis.process
        assert process is not None
        if how == "sigkill":
            process.kill()
            process.wait(10)
        else:
            self.redis.stop()
        time.sleep(down_s)
        self.redis.start()

    # --- the API as its own process (`hyv serve --workers 0`) ------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self, timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
        from hyv.service.launcher import settings_env

        self.api_port = self.api_port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # its own, under data_dir (serve clears it)
        env.update(settings_env(self.settings))
        code = "import typer; from hyv.cli import serve; typer.run(serve)"
        command = [sys.executable, "-c", code, "--workers", "0", "--port", str(self.api_port)]
        with (self.root / "api.log").open("ab") as out:
            self.api = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

        def up() -> bool:
            assert self.api is not None and self.api.poll() is None, self.api_log()[-3000:]
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s, 0.1)
        return self.api

    def kill_api(self, sig: int = signal.SIGKILL) -> None:
        assert self.api is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.api.pid, sig)
        self.api.wait(30)
        self.api = None

    def api_log(self) -> str:
        path = self.root / "api.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.api is not None:
            self.kill_api(signal.SIGTERM)
        for name in list(self.workers):
            self.stop_worker(name, grace_s=5.0)
        self.redis.stop()


def assert_never_concurrent(runs: list[dict[str, Any]]) -> None:
    """The job's runs (its delivery log) never overlapped and it completed once. A run may overlap
    the next only if it never ended (its process was killed) or ended `lost` (it noticed at its
    next step that its claim had lapsed, stopped, and published nothing)."""
    claims = [i for i, e in enumerate(runs) if e["event"] == "delivery" and e["outcome"] == "claimed"]
    for first, second in itertools.pairwise(claims):
        worker = runs[first]["worker"]
        end = next((i for i in range(first + 1, len(runs)) if _is_end(runs[i], worker)), None)
        if end is not None and end > second:
            assert runs[end]["outcome"] == "lost", f"two runs of the job overlapped: {runs}"
    completed = [e for e in runs if e["event"] == "end" and e["outcome"] == "completed"]
    assert len(completed) == 1, f"the job completed {len(completed)} times: {runs}"


def _is_end(entry: dict[str, Any], worker: str) -> bool:
    return bool(entry["event"] == "end" and entry["worker"] == worker)


def make_settings(root: Path, redis_url: str, bundle: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "data_dir": root / "data",
        "weights": bundle,
        "model_name": MODEL,
        "device": "cpu",
        "dtype": "fp32",
        "worker_heartbeat_seconds": 0.25,
        "job_lease_seconds": 1.5,
        "rate_limit_per_minute": 0,
        "max_queued_jobs_per_key": 1000,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def make_stack(
    fault_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """make_stack(workers=1, **settings overrides) -> a started Stack (stopped after the module)."""
    stacks: list[Stack] = []

    def make(workers: int = 1, **overrides: Any) -> Stack:
        root = tmp_path_factory.mktemp("stack")
        redis_server = RedisServer(root / "redis", persist=True).start()
        settings = make_settings(root, redis_server.url, fault_bundle, **overrides)
        stack = Stack(root, redis_server, settings, JobStore.from_url(redis_server.url))
        stacks.append(stack)
        for index in range(workers):
            stack.add_worker(f"w{index + 1}", wait=False)
        wait_for_workers(redis_server.url, MODEL, workers, READY_TIMEOUT_S)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
