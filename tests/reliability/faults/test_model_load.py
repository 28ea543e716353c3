"""A worker that cannot load its model (weights folder missing, or a weights file truncated): it
stays up but not ready, /readyz answers 503 and says why (the worker's load error), jobs
submitted meanwhile stay queued (the worker hands each delivery back to the queue instead of
failing it), and once a good worker is up they all complete, each once."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyv.service.api.app import create_app
from tests.reliability.faults.conftest import MODEL, SMALL, Stack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2
JOBS = 3
HELD_S = 2.0  # how long the jobs are watched staying queued with only the broken worker up


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=0)


@pytest.fixture
def api(stack: Stack, serve_app: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    """The API (uvicorn, in this process) on the stack's Redis, without keys."""
    server = serve_app(create_app(stack.settings))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def broken_weights(stack: Stack, variant: str) -> Path:
    if variant == "missing":
        return stack.root / "no-such-weights"
    broken = stack.root / "corrupt-weights"
    if not broken.exists():
        shutil.copytree(stack.settings.weights, broken)
        dit = broken / "dit" / "model.safetensors"
        dit.write_bytes(dit.read_bytes()[:1000])  # cut short, as by a failed download
    return broken


@pytest.mark.parametrize("variant", ["missing", "corrupt"])
def test_a_worker_that_cannot_load_keeps_jobs_queued(
    stack: Stack, api: httpx.Client, variant: str, record_faults: Callable[[int], None]
) -> None:
    bad = f"bad-{variant}"
    stack.add_worker(bad, wait=False, weights=broken_weights(stack, variant))
    failing = wait_until(lambda: [w for w in stack.store.workers.live(MODEL) if w.get("load_error")], 60)
    assert not failing[0]["ready"]
    for round_ in range(ROUNDS):
        ready = api.get("/readyz")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["status"] == "unavailable" and body["workers_ready"] == 0
        assert "could not load" in body["reason"] and body["load_errors"], body
        expected = "FileNotFoundError" if variant == "missing" else "model.safetensors"
        assert expected in body["reason"], body["reason"]

        ids = []
        for seed in range(JOBS):
            created = api.post("/v1/videos", json={"prompt": "a red circle", "size": "32x32", "seed": seed})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        time.sleep(HELD_S)  # the broken worker is handed the jobs and gives them back
        for job_id in ids:
            assert api.get(f"/v1/videos/{job_id}").json()["status"] == "queued"
        handed_back = [
            r for job_id in ids for r in stack.store.claims.runs(job_id) if r["outcome"] == "not_ready"
        ]
        assert handed_back, "the broken worker never received a job"

        good = f"good-{variant}-{round_}"
        stack.add_worker(good)
        for job_id in ids:
            stack.assert_completed(job_id, frames=SMALL["num_frames"], timeout_s=60)
            assert stack.store.jobs.get(job_id).attempts == 1  # type: ignore[union-attr]
        assert api.get("/readyz").status_code == 200
        stack.stop_worker(good)
        wait_until(lambda: stack.ready_workers() == 0, 30)
    stack.stop_worker(bad)
    record_faults(ROUNDS)
