"""Worker groups (hyv.service.worker_group) through the real service on the CPU: Redis, a Celery
worker whose pool process is rank 0 of a gloo group, followers as separate processes, the tiny
bundle. The video equals the single-process video; a cancel stops every rank within one step; a
follower killed or hung fails the group within the collective timeout, the job is requeued once
and the restarted group finishes it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import redis

from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.service.job_model import Job, JobStatus
from hyv.service.launcher import free_port, stop_worker
from hyv.service.worker_registry import WorkerRegistry
from tests.service.conftest import MODEL, Cluster, process_alive, wait_until
from tests.service.test_worker import LONG, at_step, ended_runs, finished

pytestmark = pytest.mark.slow

SP_TIMEOUT_S = 8.0
# 80x48x9: 3x6x10 latents, 3x3x5 = 45 video tokens, which neither 2 nor 4 ranks divide (padded).
REQUEST: dict[str, Any] = {
    "prompt": "a red circle moving right",
    "width": 80,
    "height": 48,
    "num_frames": 9,
    "steps": 3,
    "seed": 7,
}


def group_info(c: Cluster) -> dict[str, Any]:
    workers = [w for w in c.store.workers.live(MODEL) if w.get("ready")]
    assert len(workers) == 1, workers
    info: dict[str, Any] = workers[0]["sp"]
    return info


def video(c: Cluster, job: Job) -> np.ndarray:
    return read_mp4(Path(c.settings.data_dir) / "videos" / f"{job.id}.mp4")


@pytest.fixture(scope="module")
def single_process_video(tiny_bundle: Path) -> np.ndarray:
    """The same request in one process, streamed as an SP-1 worker streams it, decoded."""
    pipeline = VideoPipeline.from_dir(tiny_bundle, PipelineOptions(device="cpu"))
    mp4 = b"".join(pipeline.stream(GenerationRequest(**REQUEST)))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"hyv-sp1-{os.getpid()}.mp4"
    path.write_bytes(mp4)
    try:
        return read_mp4(path)
    finally:
        path.unlink()


@pytest.mark.parametrize(
    ("degree", "mode", "layout"),
    [(2, "ulysses", (2, 1)), (4, "usp", (2, 2))],
    ids=["sp2-ulysses", "sp4-usp2x2"],
)
def test_group_video_equals_the_single_process_video(
    cluster: Callable[..., Cluster], single_process_video: np.ndarray, degree: int, mode: str, layout: tuple
) -> None:
    c = cluster(workers=1, sp_degree=degree, sp_mode=mode, sp_timeout_seconds=SP_TIMEOUT_S)
    info = group_info(c)
    assert (info["degree"], info["ulysses_degree"], info["ring_degree"]) == (degree, *layout)
    assert len(set(info["pids"])) == degree  # one process per rank
    done = finished(c.store, c.submit(**REQUEST).id, 120)
    assert done.status == JobStatus.COMPLETED, done.error_message
    frames = video(c, done)
    assert frames.shape == single_process_video.shape == (9, 48, 80, 3)
    diff = np.abs(frames.astype(np.int16) - single_process_video.astype(np.int16))
    # The same latents up to float summation order (sharded attention, padded tokens), then the
    # same lossy encoder: a pixel one level off can change x264's choices for its block, so the
    # decoded frames differ by a few levels in a few places (measured: max 8, mean 0.18-0.25).
    assert diff.max() <= 16 and diff.mean() < 0.5, (diff.max(), diff.mean())
    mse = float((diff.astype(np.float64) ** 2).mean())
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 40.0, mse
    # Only rank 0 wrote: one video, no stray partial files.
    assert sorted(p.name for p in (Path(c.settings.data_dir) / "videos").iterdir()) == [f"{done.id}.mp4"]


def test_cancel_stops_every_rank_within_one_step(cluster: Callable[..., Cluster]) -> None:
    c = cluster(workers=1, sp_degree=2, sp_mode="ring", sp_timeout_seconds=SP_TIMEOUT_S)
    pids = group_info(c)["pids"]
    running = c.submit(**{**LONG, "steps": 400})
    at_step(c.store, running.id, 3)
    c.store.cancels.request(running.id)
    step_at_cancel = c.store.jobs.get(running.id).step  # type: ignore[union-attr]
    done = finished(c.store, running.id, 30)
    assert done.status == JobStatus.CANCELLED
    assert done.step <= step_at_cancel + 1

    # Every rank is free at once: the same group (no restart) runs the next job to the end.
    after = finished(c.store, c.submit(**REQUEST).id, 60)
    assert after.status == JobStatus.COMPLETED, after.error_message
    assert group_info(c)["pids"] == pids


def test_cancel_during_decode_stops_every_rank(cluster: Callable[..., Cluster]) -> None:
    # Time tiles of 8 frames half overlapping: the 17 frames decode in 4 windows, split over the
    # ranks, with a cancel check after each.
    c = cluster(
        workers=1,
        sp_degree=2,
        sp_timeout_seconds=SP_TIMEOUT_S,
        vae_tile_frames=8,
        vae_tile_overlap=0.5,
    )
    pids = group_info(c)["pids"]
    job = c.submit(**{**REQUEST, "width": 128, "height": 128, "num_frames": 17})
    pubsub = c.store.redis.pubsub()
    pubsub.subscribe(c.store.jobs.keys.events(job.id))
    deadline = time.monotonic() + 60
    cancelled_in: str | None = None
    while time.monotonic() < deadline and cancelled_in is None:
        message = pubsub.get_message(timeout=0.5)
        if (
            message
            and message["type"] == "message"
            and json.loads(message["data"])["job"]["stage"] == "decode"
        ):
            c.store.cancels.request(job.id)
            cancelled_in = "decode"
    done = finished(c.store, job.id, 30)
    assert cancelled_in == "decode"
    assert done.status == JobStatus.CANCELLED and done.stage == "decode", (done.status, done.stage)
    after = finished(c.store, c.submit(**REQUEST).id, 60)
    assert after.status == JobStatus.COMPLETED, after.error_message
    assert group_info(c)["pids"] == pids


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_failed_rank_requeues_the_job_once_and_the_restarted_group_finishes_it(
    cluster: Callable[..., Cluster], fault: str
) -> None:
    c = cluster(workers=1, sp_degree=2, sp_timeout_seconds=SP_TIMEOUT_S)
    old_pids = group_info(c)["pids"]
    job = c.submit(**{**LONG, "steps": 300})
    at_step(c.store, job.id, 3)
    follower = old_pids[1]
    os.kill(follower, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    failed_at = time.monotonic()
    try:
        requeued = wait_until(lambda: _ran_twice(c, job.id), SP_TIMEOUT_S + 20)
    finally:
        if fault == "hung":  # if the group has not killed it already
            with contextlib.suppress(ProcessLookupError):
                os.kill(follower, signal.SIGKILL)
    # A dead rank is seen at the next collective; a hung one at the collective timeout.
    assert time.monotonic() - failed_at < SP_TIMEOUT_S + 20
    assert requeued
    done = finished(c.store, job.id, 180)
    assert done.status == JobStatus.COMPLETED, done.error_message
    assert done.attempts == 2
    runs = ended_runs(c.store, job.id)
    assert [r["outcome"] for r in runs if r["event"] == "end"] == ["requeued", "completed"]
    new_pids = group_info(c)["pids"]
    assert new_pids[0] == old_pids[0] and follower not in new_pids  # rank 0 restarted its group
    assert not process_alive(follower)
    assert video(c, done).shape == (9, 64, 64, 3)


def _ran_twice(c: Cluster, job_id: str) -> bool:
    return sum(r["outcome"] == "claimed" for r in c.store.claims.runs(job_id)) >= 2


def test_sigterm_drains_the_running_job_then_the_whole_group_exits(cluster: Callable[..., Cluster]) -> None:
    """What `docker stop` and Kubernetes send: SIGTERM to the worker's main process. The group
    finishes its job, takes no other, and every rank exits."""
    c = cluster(workers=1, sp_degree=2, sp_timeout_seconds=SP_TIMEOUT_S)
    pids = group_info(c)["pids"]
    job = c.submit(**{**LONG, "steps": 150})
    at_step(c.store, job.id, 3)
    os.kill(c.workers[0].pid, signal.SIGTERM)
    assert c.workers[0].wait(120) == 0
    done = c.store.jobs.get(job.id)
    assert done is not None and done.status == JobStatus.COMPLETED, done
    assert done.attempts == 1 and done.step == 150
    wait_until(lambda: all(not process_alive(pid) for pid in pids), 15)


def test_a_job_past_the_grace_period_is_requeued_and_finished_elsewhere(
    cluster: Callable[..., Cluster],
) -> None:
    """launcher.stop_worker: SIGTERM to the worker's process group, SIGKILL after the grace period.
    No rank outlives the worker; the job goes back to the queue and another group completes it."""
    c = cluster(workers=1, sp_degree=2, sp_timeout_seconds=SP_TIMEOUT_S)
    pids = group_info(c)["pids"]
    job = c.submit(**{**LONG, "steps": 600})
    at_step(c.store, job.id, 3)
    stop_worker(c.workers[0], grace_s=1.0)
    wait_until(lambda: all(not process_alive(pid) for pid in pids), 15)  # no rank outlives the worker
    c.add_worker("rescuer")  # its beat requeues the job once the dead run's claim lapses
    done = finished(c.store, job.id, 120)
    assert done.status == JobStatus.COMPLETED, done.error_message
    assert done.attempts == 2 and done.worker is not None
    assert int(done.worker.rsplit(":", 1)[1]) not in pids  # the rescuer ran it


def test_hyv_serve_sp_2_serves_the_openai_sdk(tiny_bundle: Path, tmp_path: Path) -> None:
    """The single-machine command a user runs, `hyv serve --sp 2`: its own Redis, one worker that is
    a group of two processes, the API; a job through the OpenAI SDK."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve uses data_dir/metrics
    env.update(HYV_DEVICE="cpu", HYV_DTYPE="fp32", HYV_WORKER_HEARTBEAT_SECONDS="0.25")
    data = tmp_path / "data"
    command = [sys.executable, "-m", "hyv", "serve", "--sp", "2", "--port", str(port)]
    command += ["--weights", str(tiny_bundle), "--data-dir", str(data)]
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        serve = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base) or serve.poll() is not None, 180, 0.2)
        assert serve.poll() is None, log.read_text()[-3000:]
        (worker,) = WorkerRegistry(redis.Redis.from_url((data / "redis" / "url").read_text().strip())).live(
            MODEL
        )
        assert worker["sp"]["degree"] == 2 and len(set(worker["sp"]["pids"])) == 2
        with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client:
            created: Any = client.videos.create_and_poll(
                prompt="a red circle moving right",
                size="80x48",  # type: ignore[arg-type]  (the SDK's hints list Sora's sizes)
                extra_body={"num_frames": 9, "steps": 3, "seed": 7},
                poll_interval_ms=200,
            )
            assert created.status == "completed", created.error
            target = tmp_path / "clip.mp4"
            client.videos.download_content(created.id).write_to_file(target)
        assert read_mp4(target).shape == (9, 48, 80, 3)
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(60) == 0, log.read_text()[-3000:]
        wait_until(lambda: all(not process_alive(pid) for pid in worker["sp"]["pids"]), 15)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(10)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
