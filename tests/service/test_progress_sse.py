"""Progress through every stage, as a client of the events feed sees it: a real worker (decoding in
9 VAE tiles) behind the real API, the production progress throttle, every event of one job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.service.conftest import Cluster
from tests.service.conftest_api import KEY_A, auth
from tests.service.test_api_content import read_events

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

STAGES = ["text_encode", "denoise", "decode", "encode"]
FRAMES = 9


def test_progress_rises_through_decode_and_encode_to_100(
    cluster: Callable[..., Cluster], serve_app: Callable[[Any], Any]
) -> None:
    # 32 px tiles overlapping by half: a 64x64 video's 8x8 latents decode in 3 x 3 spatial tiles.
    workers = cluster(workers=1, vae_tile_size=32, vae_tile_overlap=0.5, progress_interval_s=0.1)
    server = serve_app(workers.settings.model_copy(update={"api_keys": [KEY_A]}))
    request = {"prompt": "a red circle moving right", "size": "64x64", "num_frames": FRAMES, "steps": 100}
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        created = client.post("/v1/videos", json=request)
        assert created.status_code == 201, created.text
        with client.stream("GET", f"/v1/videos/{created.json()['id']}/events", timeout=120) as response:
            events = list(read_events(response))

    assert [e["event"] for e in events][-1] == "video.completed"
    jobs = [e["data"] for e in events]
    progress = [job["progress"] for job in jobs]
    assert progress == sorted(progress), progress
    assert progress[-1] == 100 and jobs[-1]["status"] == "completed"
    seen = [STAGES.index(job["stage"]) for job in jobs if job["stage"]]
    assert seen == sorted(seen) and set(seen) >= {1, 2, 3}, [job["stage"] for job in jobs]
    by_stage = {stage: [job["progress"] for job in jobs if job["stage"] == stage] for stage in STAGES}
    # Each stage's first and last report are written whatever the throttle: decode from the end
    # of denoising (90) to 98 at its last tile, encode from there to 99 (100 is the final state).
    assert by_stage["denoise"][-1] == 90
    assert by_stage["decode"][0] == 90 and by_stage["decode"][-1] == 98, by_stage["decode"]
    assert by_stage["encode"][0] == 98 and by_stage["encode"][-2] == 99, by_stage["encode"]
    assert len(set(by_stage["decode"])) >= 2 and len(set(by_stage["encode"])) >= 2
