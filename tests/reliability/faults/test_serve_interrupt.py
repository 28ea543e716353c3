"""Ctrl-C (SIGINT) to a real `hyv serve` (its own Redis, one worker, the API) while a job runs and
another waits behind it, then `hyv serve` again on the same data directory.

    completes  the default grace: the running job finishes before the worker exits; the one behind
               waits in Redis and runs after the restart
    requeued   a half-second grace: the running job goes back to the front of its queue, marked
               queued, and after the restart it runs first, then the one behind
    killed     SIGKILL to every process of `hyv serve` (the machine's OOM killer, a power cut of the
               processes), claims leased for ten minutes: the restarted worker sees that the claim
               names a process of this machine that is gone and requeues the job, at the front,
               before it says ready

No job lost or run twice (the delivery log), one MP4 each, and neither job reads `in_progress` from
the moment the restarted worker is ready until a run of it really starts (and, but for the killed
variant, none from the moment the restarted Redis answers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.launcher import free_port
from tests.reliability.faults.conftest import MEDIUM, MODEL, SMALL, assert_never_concurrent, wait_until
from tests.service.serve_process import start_hyv_serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

READY_TIMEOUT_S = 180.0
# Long enough to be caught mid-denoise and to outlast a half-second grace even on an idle machine
# (300 steps of 9 frames took 0.7 s there, finishing inside the grace); about 5 s to finish.
RUNNING = {**MEDIUM, "num_frames": 17, "steps": 1000}


def start_serve(
    data: Path, bundle: Path, log: Path, grace_s: float | None, lease_s: float = 1.5
) -> tuple[subprocess.Popen[bytes], str]:
    """`hyv serve` (the CLI's command, as `make serve` runs it) in its own session, like a terminal's
    foreground job; returns it and its base URL once /readyz says ready."""
    port = free_port()
    env = {"HYV_JOB_LEASE_SECONDS": str(lease_s), "OMP_NUM_THREADS": "1"}
    if grace_s is not None:
        env["HYV_SHUTDOWN_GRACE_SECONDS"] = str(grace_s)
    serve = start_hyv_serve(data, bundle, port, log, **env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base) or serve.poll() is not None, READY_TIMEOUT_S, 0.2)
    assert serve.poll() is None, log.read_text(errors="replace")[-3000:]
    return serve, base


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _store(data: Path) -> JobStore:
    return JobStore.from_url((data / "redis" / "url").read_text().strip())


def _submit(base: str, request: dict[str, Any]) -> str:
    body = {"prompt": "a red circle moving right", "size": f"{request['width']}x{request['height']}"}
    body.update(num_frames=request["num_frames"], steps=request["steps"])
    response = httpx.post(f"{base}/v1/videos", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _claimed_at(store: JobStore, job_id: str) -> list[float]:
    runs = store.claims.runs(job_id)
    return [r["t"] for r in runs if r["event"] == "delivery" and r["outcome"] == "claimed"]


def watch_restart(
    data: Path, bundle: Path, log: Path, old_url: str, job_ids: list[str], lease_s: float
) -> tuple[subprocess.Popen[bytes], str, list[tuple[str, str]], dict[str, Job]]:
    """`hyv serve` again; every status of `job_ids` read from the moment its Redis answers until
    its worker says ready, and each job as read just after that."""
    started: dict[str, Any] = {}
    at_ready: dict[str, Job] = {}

    def start() -> None:
        try:
            started["serve"] = start_serve(data, bundle, log, None, lease_s)
        except BaseException as exc:  # raised again below, in the test's thread
            started["error"] = exc

    starter = threading.Thread(target=start)
    starter.start()
    seen: list[tuple[str, str]] = []
    store: JobStore | None = None
    while starter.is_alive():
        with contextlib.suppress(OSError, redis.RedisError):
            if (data / "redis" / "url").read_text().strip() != old_url:  # the new Redis is up
                store = store or _store(data)
                if any(worker.get("ready") for worker in store.workers.live(MODEL)):
                    at_ready = {job_id: job for job_id in job_ids if (job := store.jobs.get(job_id))}
                    break
                for job_id in job_ids:
                    if (job := store.jobs.get(job_id)) is not None:
                        seen.append((job_id, job.status.value))
        time.sleep(0.02)
    starter.join()
    if "error" in started:
        raise started["error"]
    serve, base = started["serve"]
    return serve, base, seen, at_ready


def _kill_all(pid: int) -> None:
    """SIGKILL `pid` and every process under it (Redis and the worker run in sessions of their own)."""
    family, found = [pid], True
    while found:
        found = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                child, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if parent in family and child not in family:
                    family.append(child)
                    found = True
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.parametrize("variant", ["completes", "requeued", "killed"])
def test_ctrl_c_on_hyv_serve_finishes_or_requeues_the_running_job(
    fault_bundle: Path, tmp_path: Path, variant: str, record_faults: Callable[..., None]
) -> None:
    data = tmp_path / "data"
    grace_s = 0.5 if variant == "requeued" else None  # None: the default grace
    # A lease a busy machine's beat cannot miss (the hand-back requeues the job itself, so nothing
    # here waits for a lease to lapse), except after SIGKILL, where only the restart takes it back.
    lease_s = 600.0 if variant == "killed" else 5.0
    serve, base = start_serve(data, fault_bundle, tmp_path / "serve.log", grace_s, lease_s)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        store = _store(data)
        running_id = _submit(base, RUNNING)
        wait_until(lambda: (j := store.jobs.get(running_id)) is not None and j.step >= 3, 60)
        behind_id = _submit(base, SMALL)

        if variant == "killed":
            _kill_all(serve.pid)
            serve.wait(30)
        else:
            os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in the terminal
            assert serve.wait(120) == 0, (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
        old_url = (data / "redis" / "url").read_text().strip()

        restarted, base, seen, at_ready = watch_restart(
            data, fault_bundle, tmp_path / "serve2.log", old_url, [running_id, behind_id], lease_s
        )
        store = _store(data)
        statuses = {
            job_id: {status for j, status in seen if j == job_id} for job_id in (running_id, behind_id)
        }
        assert seen, "Redis answered only once the worker was ready"
        first_run_ends = [r["outcome"] for r in store.claims.runs(running_id) if r["event"] == "end"]
        if variant == "completes":
            assert first_run_ends[0] == "completed"
            assert statuses[running_id] == {"completed"}
        elif variant == "requeued":
            assert first_run_ends[0] == "requeued"
            assert statuses[running_id] == {"queued"}  # handed back, never a stale in_progress
        else:  # the killed run never ended; its job reads in_progress only while the model loads
            assert "requeued" not in first_run_ends
            assert statuses[running_id] <= {"in_progress", "queued"}
        assert statuses[behind_id] == {"queued"}
        for job_id, job in at_ready.items():  # in progress by now only if a new run claimed it
            claims = len(_claimed_at(store, job_id))
            assert job.status != JobStatus.IN_PROGRESS or claims == (2 if job_id == running_id else 1), job

        done = {job_id: _finished(store, job_id) for job_id in (running_id, behind_id)}
        for job_id, job in done.items():
            assert job.status == JobStatus.COMPLETED, (job.status, job.error_message)
            assert_never_concurrent(store.claims.runs(job_id))
        videos = sorted(path.name for path in (data / "videos").iterdir())
        assert videos == sorted(f"{job_id}.mp4" for job_id in (running_id, behind_id)), videos
        assert done[behind_id].attempts == 1
        if variant != "completes":
            assert done[running_id].attempts == 2
            assert _claimed_at(store, running_id)[-1] < _claimed_at(store, behind_id)[0]  # it ran first
        else:
            assert done[running_id].attempts == 1
        record_faults(1)
    finally:
        for process in (serve, restarted):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


def _finished(store: JobStore, job_id: str) -> Job:
    def check() -> Job | None:
        job = store.jobs.get(job_id)
        return job if job is not None and job.finished else None

    found: Job = wait_until(check, 240, 0.1)
    return found
