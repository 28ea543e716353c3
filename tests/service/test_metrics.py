"""hyv/service/metrics.py and the API's /metrics: a process that could not write its metrics file is
skipped; every job is counted once in hyv_jobs_finished_total (one cancelled while queued too);
memory gauges named for what they measure; the web page's files labelled by their route; the API
process's own process_* series."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyv.service import metrics
from hyv.service.job_store import JobStore
from tests.service.conftest import wait_until
from tests.service.conftest_api import KEY_A, auth

MODEL = "hyv-tiny"
CANCELLED = f'hyv_jobs_finished_total{{model="{MODEL}",status="cancelled"}}'
# Long enough for a second job to wait behind it; cancelled by the test once that one is dropped.
BLOCKER = {"prompt": "a slow red circle", "size": "64x64", "num_frames": 9, "steps": 1000}
SHORT = {"prompt": "a red circle", "size": "32x32", "num_frames": 5, "steps": 2}


def metric_samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def scrape(client: httpx.Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return metric_samples(response.text)


def video(client: httpx.Client, video_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/videos/{video_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def live(service_settings: Any, worker: Any, serve_app: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    """The API (in this process, so its counters are this process's) on the shared worker's Redis."""
    settings = service_settings.model_copy(update={"api_keys": [KEY_A]})
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client


def test_an_empty_metrics_file_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose disk is full (or whose file size is limited) leaves an empty
    `histogram_<pid>.db`; prometheus-client's reader raises on it, which made every /metrics a 500."""
    metrics.observe_request("/v1/videos", "GET", 200, 0.01)
    folder = metrics.multiproc_dir()
    empty = folder / "histogram_999999999.db"
    empty.touch()
    try:
        with caplog.at_level(logging.WARNING, logger="hyv.service.metrics"):
            body, _ = metrics.render_metrics()
    finally:
        empty.unlink()
    assert b'hyv_requests_total{code="200",method="GET",route="/v1/videos"}' in body
    assert any("histogram_999999999.db" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_cancelled_while_queued_is_counted_once(live: httpx.Client, store: JobStore) -> None:
    """The API's cancel ends a queued job (no worker ever runs it), so the API counts it; the
    worker that later receives its delivery drops it without counting it again. The running job
    cancelled afterwards is the worker's to count: two cancels, exactly two more."""
    before = scrape(live).get(CANCELLED, 0.0)
    blocker = live.post("/v1/videos", json=BLOCKER)
    assert blocker.status_code == 201, blocker.text
    blocker_id = blocker.json()["id"]
    try:
        wait_until(lambda: video(live, blocker_id)["status"] == "in_progress", 60)
        waiting = live.post("/v1/videos", json=SHORT)
        assert waiting.status_code == 201, waiting.text
        waiting_id = waiting.json()["id"]
        assert video(live, waiting_id)["status"] == "queued"

        cancelled = live.delete(f"/v1/videos/{waiting_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert scrape(live)[CANCELLED] == before + 1
    finally:
        live.delete(f"/v1/videos/{blocker_id}")  # a running job: its worker stops and counts it
    wait_until(lambda: video(live, blocker_id)["status"] == "cancelled", 60)

    def dropped() -> bool:
        return any(
            run["event"] == "delivery" and run["outcome"] == "finished"
            for run in store.claims.runs(waiting_id)
        )

    wait_until(dropped, 60)  # the worker received the cancelled job's message, and dropped it
    assert video(live, waiting_id)["status"] == "cancelled"
    assert scrape(live)[CANCELLED] == before + 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_memory_gauges_are_named_for_what_they_measure(live: httpx.Client, store: JobStore) -> None:
    """A CPU worker's resident memory is its own gauge, per worker; the GPU gauge has no samples."""
    workers = {str(w["hostname"]) for w in store.workers.live(MODEL) if w.get("ready")}
    assert workers
    samples = scrape(live)
    resident = {
        key.split('worker="', 1)[1].rstrip('"}'): value
        for key, value in samples.items()
        if key.startswith("hyv_worker_resident_memory_bytes{")
    }
    assert workers <= set(resident)
    for name in workers:
        assert 50 * 2**20 < resident[name] < 8 * 2**30, (name, resident[name])  # a loaded tiny model
    assert not [key for key in samples if key.startswith("hyv_gpu_memory_bytes")]
    assert not [key for key in samples if "process_rss" in key]


@pytest.mark.slow
def test_the_web_pages_files_are_labelled_with_their_route(api: httpx.Client) -> None:
    def count(samples: dict[str, float], code: int, route: str) -> float:
        return samples.get(f'hyv_requests_total{{code="{code}",method="GET",route="{route}"}}', 0.0)

    before = scrape(api)
    for name in ("app.js", "style.css"):
        assert api.get(f"/web/{name}").status_code == 200
    assert api.get("/web/no-such-file.js").status_code == 404
    assert api.get("/").status_code == 200
    expected = {(200, "/web/{path}"): 2, (404, "/web/{path}"): 1, (200, "/"): 1, (200, "unmatched"): 0}

    def counted() -> dict[str, float] | None:
        # A request is recorded once its response has gone out: the client may ask first.
        after = scrape(api)
        done = all(count(after, *key) >= count(before, *key) + n for key, n in expected.items())
        return after if done else None

    after = wait_until(counted, 10)
    for key, n in expected.items():
        assert count(after, *key) == count(before, *key) + n, key


@pytest.mark.slow
def test_the_api_exports_its_own_process_metrics(api: httpx.Client) -> None:
    """In multiprocess mode prometheus-client's merge has no process_* series; the API adds its own
    (the server here runs in this test's process, so they are this process's)."""
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    samples = scrape(api)
    page = os.sysconf("SC_PAGE_SIZE")
    own_rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
    assert 0.5 * own_rss < samples["process_resident_memory_bytes"] < 2 * own_rss
    assert samples["process_virtual_memory_bytes"] >= samples["process_resident_memory_bytes"]
    assert samples["process_cpu_seconds_total"] > 0
    assert samples["process_open_fds"] >= 3
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    started = boot + int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf(
        "SC_CLK_TCK"
    )
    assert abs(samples["process_start_time_seconds"] - started) < 1
    assert samples["process_start_time_seconds"] < time.time()
