"""`hyv serve --weights RELEASE`: the real service (Redis, a Celery worker, the API, all started by
the command) on a HunyuanVideo release folder as downloaded, Tencent's and diffusers' layouts,
driven by OpenAI's official SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from hyv.service.launcher import free_port
from tests.fixtures.releases import LAYOUTS, release_folder
from tests.service.conftest import wait_until

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the SDK's Videos API is deprecated
]

READY_TIMEOUT_S = 180.0


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(params=LAYOUTS)
def served_release(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> Iterator[str]:
    """`hyv serve --weights <release>` on a free port; yields the API's base URL."""
    weights = release_folder(tmp_path_factory, request.param)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve uses data_dir/metrics
    env.update(HYV_DEVICE="cpu", HYV_DTYPE="fp32", HYV_WORKER_HEARTBEAT_SECONDS="0.25")
    command = [sys.executable, "-m", "hyv", "serve", "--port", str(port), "--weights", str(weights)]
    command += ["--data-dir", str(tmp_path / "data")]
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        serve = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base) or serve.poll() is not None, READY_TIMEOUT_S, 0.2)
        assert serve.poll() is None, log.read_text()[-3000:]
        yield base
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(10)


def test_openai_sdk_generates_from_a_release_folder(served_release: str, tmp_path: Path) -> None:
    with openai.OpenAI(base_url=f"{served_release}/v1", api_key="unused", max_retries=0) as client:
        models = client.models.list()
        assert [m.id for m in models.data] == ["hunyuan-video-13b"]
        video: Any = client.videos.create_and_poll(
            prompt="a red circle moving right",
            size="720x720",  # type: ignore[arg-type]  (the SDK's hints list Sora's sizes)
            extra_body={"num_frames": 5, "steps": 2, "seed": 11},
            poll_interval_ms=200,
        )
        assert video.status == "completed", video.error
        assert video.model == "hunyuan-video-13b" and video.size == "720x720"
        target = tmp_path / "clip.mp4"
        client.videos.download_content(video.id).write_to_file(target)

    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(frames) == 5 and frames[0].shape == (720, 720, 3)
