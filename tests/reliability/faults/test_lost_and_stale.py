"""Jobs that could be lost, admitted past their cap, or written by two runs: a Celery message lost
before any worker claimed its job; three API processes racing for one key's last queue slots; a
worker frozen past its lease that wakes up after another worker finished its job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from hyv.service.job_model import JobStatus
from hyv.service.launcher import free_port, settings_env
from hyv.service.queue_reaper import broker_lists, job_id_of
from tests.reliability.faults.conftest import MEDIUM, SMALL, Stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 3
KEYS = [f"key-{i}" for i in range(ROUNDS)]
CAP = 4


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=0, queued_reap_after_seconds=1.0, api_keys=KEYS, max_queued_jobs_per_key=CAP)


def test_a_job_whose_message_was_lost_before_its_claim_completes_once(
    stack: Stack, record_faults: Callable[[int], None]
) -> None:
    """What a Redis crash between the broker handing out a message and the worker's claim, then
    that worker dying, leaves: the job queued, its message nowhere. A worker's beat sends it again;
    when the old message comes back anyway, the claim protocol drops the second delivery."""
    queue_list = broker_lists(stack.settings.queue_name)[0]
    lost: list[tuple[str, bytes]] = []
    for _ in range(ROUNDS):  # no worker yet: the messages wait in the queue's list
        job = stack.submit(**SMALL)
        raw = stack.store.redis.lpop(queue_list)
        assert raw is not None and job_id_of(raw) == job.id  # type: ignore[arg-type]
        lost.append((job.id, raw))  # type: ignore[arg-type]
    assert stack.store.redis.llen(queue_list) == 0
    stack.add_worker("sweeper")
    for job_id, raw in lost:
        done = stack.assert_completed(job_id, frames=SMALL["num_frames"], timeout_s=120)
        assert done.attempts == 1
        runs = stack.store.claims.runs(job_id)
        assert [r["event"] for r in runs].count("reenqueued") == 1
        stack.store.redis.rpush(queue_list, raw)  # the lost message reappears
        seen = len(runs)
        wait_until(lambda job_id=job_id, seen=seen: len(stack.store.claims.runs(job_id)) > seen, 30)
        again = stack.store.claims.runs(job_id)[len(runs) :]
        assert [(r["event"], r["outcome"]) for r in again] == [("delivery", "finished")]
        after = stack.store.jobs.get(job_id)
        assert after is not None and after.status == JobStatus.COMPLETED and after.attempts == 1
    stack.stop_worker("sweeper")
    record_faults(ROUNDS)


@pytest.fixture
def api_processes(stack: Stack) -> Iterator[list[str]]:
    """Three `hyv serve --workers 0` processes on the stack's Redis; their base URLs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(settings_env(stack.settings))
    code = "import typer; from hyv.cli import serve; typer.run(serve)"
    processes, urls = [], []
    for index in range(3):
        port = free_port()
        with (stack.root / f"api-{index}.log").open("ab") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, "--workers", "0", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_until(lambda url=url: _healthy(url), 60, 0.1)
        yield urls
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_three_api_processes_never_admit_more_than_the_cap(
    stack: Stack, api_processes: list[str], record_faults: Callable[[int], None]
) -> None:
    """48 submissions at once, 16 through each of three API processes, for one key with room for
    4: exactly 4 are admitted (201), the rest answer 429, and the key never has more than 4."""
    body: dict[str, Any] = {"prompt": "a red circle", "size": "32x32", "num_frames": 5, "steps": 2}
    for key in KEYS:
        answers = _submit_at_once(api_processes, key, body, per_process=16)
        assert sorted(set(answers)) == [201, 429] and len(answers) == 48, answers
        assert answers.count(201) == CAP
        owner = _owner_of(stack, key)
        assert stack.store.jobs.queued_count(owner) == CAP
        assert len(stack.store.jobs.list_for_owner(owner, limit=100)) == CAP  # nothing else was created
    record_faults(len(KEYS))


def _submit_at_once(urls: list[str], key: str, body: dict[str, Any], per_process: int) -> list[int]:
    """POST /v1/videos `per_process` times through each API process, all released at once."""
    answers: list[int] = []
    start = threading.Barrier(per_process * len(urls))

    def submit(url: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            start.wait()
            answers.append(client.post("/v1/videos", json=body).status_code)

    threads = [threading.Thread(target=submit, args=(url,)) for url in urls for _ in range(per_process)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def _run_ended(stack: Stack, job_id: str, worker: str) -> bool:
    return any(r["event"] == "end" and r["worker"] == worker for r in stack.store.claims.runs(job_id))


def _owner_of(stack: Stack, key: str) -> str:
    from hyv.service.job_model import owner_for_key

    return owner_for_key(key)


def test_a_worker_frozen_past_its_lease_cannot_write_into_the_new_owners_job(
    stack: Stack, record_faults: Callable[[int], None]
) -> None:
    """A worker stopped (SIGSTOP) mid-job past its claim lease; another worker requeues the job,
    runs it and completes it; then the frozen one resumes (SIGCONT). Its progress and final writes
    are refused: the job's record stays exactly the new owner's result."""
    for name in ("a", "b"):
        stack.add_worker(name)
    for _ in range(ROUNDS):
        job = stack.submit(**{**MEDIUM, "steps": 300})
        stack.wait_running([job.id], 1)
        running = stack.store.jobs.get(job.id)
        assert running is not None
        frozen = stack.worker_running(running)
        os.killpg(stack.workers[frozen].pid, signal.SIGSTOP)
        try:
            done = stack.finished(job.id, 180)
        finally:
            os.killpg(stack.workers[frozen].pid, signal.SIGCONT)
        assert done.status == JobStatus.COMPLETED and done.worker != running.worker, done
        video = stack.video_path(job.id).read_bytes()

        wait_until(lambda job_id=job.id, worker=running.worker: _run_ended(stack, job_id, worker), 60)
        ends = [r for r in stack.store.claims.runs(job.id) if r["event"] == "end"]
        assert {r["worker"]: r["outcome"] for r in ends}[running.worker] == "lost"
        after = stack.store.jobs.get(job.id)
        assert after == done  # not one field written by the woken run (the version included)
        assert stack.video_path(job.id).read_bytes() == video
    record_faults(ROUNDS)
