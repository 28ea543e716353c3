"""Remix, edits and extensions through the real service, driven by OpenAI's official SDK: a real
Redis, a real Celery worker serving the bundled model (weights/hyv-small: image-to-video capable,
so extensions run) and the API on uvicorn. The videos are read back and judged.

What is checked: the new job's record (operation, source, size, length, seed), the stitched MP4 of
an extension (the source's frames kept, the seam within the VAE's error, the motion continued),
chained extensions, uploads in multipart and references in JSON, and the errors: an unfinished or
unknown source, no source, both sources, a file that is not a video.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.video_io import read_mp4
from hyv.service.launcher import start_worker, stop_worker, wait_for_workers
from hyv.training.eval.judge import judge_clip
from tests.service.conftest import WORKER_READY_TIMEOUT_S, _next_db, make_settings
from tests.service.conftest_api import KEY_A, KEY_B, LiveServer, auth

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the SDK marks the Videos API deprecated
]

MODEL = "hyv-small"
PROMPT = "a red circle moving right on a black background"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


@pytest.fixture(scope="module")
def base_url(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from hyv.service.api.app import create_app

    tmp = tmp_path_factory.mktemp("derived")
    url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_next_db)}"
    settings = make_settings(url, tmp / "data", DEFAULT_BUNDLE_DIR, model_name=MODEL, api_keys=[KEY_A, KEY_B])
    worker = start_worker(settings, "derived", log_path=tmp / "worker.log")
    server = None
    try:
        wait_for_workers(url, MODEL, 1, WORKER_READY_TIMEOUT_S)
        server = LiveServer(create_app(settings)).start()
        yield f"{server.url}/v1"
    finally:
        if server is not None:
            server.stop()
        stop_worker(worker)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=base_url, api_key=KEY_A, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def source(client: Any) -> Any:
    video = client.videos.create_and_poll(
        prompt=PROMPT, size="64x64", extra_body={"num_frames": 17, "seed": 3}, poll_interval_ms=100
    )
    assert video.status == "completed", video.error
    return video


def _frames(client: Any, video_id: str) -> np.ndarray:
    return read_mp4(client.videos.download_content(video_id).content)


def _poll(client: Any, video: Any) -> Any:
    done = client.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed", done.error
    return done


def test_remix_keeps_size_length_and_seed_and_follows_the_new_prompt(client: Any, source: Any) -> None:
    remix = client.videos.remix(source.id, prompt="a blue circle moving right on a black background")
    assert remix.remixed_from_video_id == source.id
    done = _poll(client, remix)
    assert (done.size, done.num_frames, done.seed) == ("64x64", 17, source.seed)
    assert done.model_extra["operation"] == "remix" and done.model_extra["source_video_id"] == source.id
    judged = judge_clip(_frames(client, done.id))
    assert judged.color == "blue" and judged.shape == "circle" and judged.motion == "moving right"


def test_extension_stitches_the_source_and_continues_its_motion(
    base_url: str, client: Any, source: Any
) -> None:
    before = _frames(client, source.id)
    # The SDK sends the source as a file (its multipart encoder refuses {"id": ...} client-side)
    upload = ("source.mp4", client.videos.download_content(source.id).content, "video/mp4")
    done = _poll(client, client.videos.extend(video=upload, prompt=PROMPT, seconds="4"))
    new = 33  # "4" s at 8 fps: the model's 33-frame length
    assert done.num_frames == 17 + new - 1 and done.size == "64x64" and done.seconds == "6"
    assert done.model_extra["operation"] == "extend" and done.model_extra["source_video_id"] is None
    after = _frames(client, done.id)
    assert after.shape == (17 + new - 1, 64, 64, 3)
    assert psnr(after[:16], before[:16]) > 35  # the source's frames, re-encoded once
    assert psnr(before[-1], after[16]) >= 28  # the seam: the new first frame redraws the old last
    first, second = judge_clip(after[:17]), judge_clip(after[16:])
    assert first.motion == second.motion == "moving right"

    # ... and by reference, in JSON: a chain of extensions
    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as http:
        sent = http.post(
            "/videos/extensions", json={"prompt": PROMPT, "video": {"id": done.id}, "seconds": "2"}
        )
    assert sent.status_code == 201, sent.text
    assert sent.json()["source_video_id"] == done.id and sent.json()["operation"] == "extend"
    chained = _poll(client, client.videos.retrieve(sent.json()["id"]))
    assert chained.num_frames == done.num_frames + 17 - 1
    assert psnr(_frames(client, chained.id)[: done.num_frames - 1], after[:-1]) > 35


def test_edit_of_an_upload_and_of_a_reference(
    base_url: str, client: Any, source: Any, tmp_path: Path
) -> None:
    mp4 = tmp_path / "source.mp4"
    mp4.write_bytes(client.videos.download_content(source.id).content)
    with mp4.open("rb") as file:
        uploaded = client.videos.edit(video=file, prompt="a green square moving right on a black background")
    done = _poll(client, uploaded)
    assert done.model_extra["operation"] == "edit" and done.model_extra["source_video_id"] is None
    assert (done.size, done.num_frames) == ("64x64", 17)
    judged = judge_clip(_frames(client, done.id))
    assert judged.color == "green" and judged.shape == "square"

    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as http:
        sent = http.post("/videos/edits", json={"prompt": PROMPT, "video": {"id": source.id}, "seed": 5})
    assert sent.status_code == 201, sent.text
    referenced = _poll(client, client.videos.retrieve(sent.json()["id"]))
    assert referenced.model_extra["source_video_id"] == source.id and referenced.seed == 5


def test_extension_of_an_upload_in_multipart_and_a_reference_in_json(
    base_url: str, client: Any, source: Any
) -> None:
    data = client.videos.download_content(source.id).content
    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as http:
        upload = http.post(
            "/videos/extensions",
            data={"prompt": PROMPT, "seconds": "2"},
            files={"video": ("clip.mp4", io.BytesIO(data), "video/mp4")},
        )
        assert upload.status_code == 201, upload.text
        assert upload.json()["num_frames"] == 17 + 17 - 1
        as_json = http.post("/videos/extensions", json={"prompt": PROMPT, "video": {"id": source.id}})
        assert as_json.status_code == 201, as_json.text
        assert as_json.json()["source_video_id"] == source.id
    for video_id in (upload.json()["id"], as_json.json()["id"]):
        assert client.videos.poll(video_id, poll_interval_ms=100).status == "completed"


def test_bad_sources_are_refused_with_the_reason(base_url: str, client: Any, source: Any) -> None:
    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as http:
        not_a_video = http.post(
            "/videos/edits",
            data={"prompt": PROMPT},
            files={"video": ("clip.mp4", io.BytesIO(b"not a video at all"), "video/mp4")},
        )
        assert not_a_video.status_code == 422
        assert not_a_video.json()["error"]["param"] == "video"
        assert "video" in not_a_video.json()["error"]["message"]

        missing = http.post("/videos/extensions", json={"prompt": PROMPT})
        assert missing.status_code == 422 and "video is required" in missing.json()["error"]["message"]

        both = http.post(
            "/videos/edits",
            data={"prompt": PROMPT, "video[id]": source.id},
            files={"video": ("clip.mp4", io.BytesIO(b"x"), "video/mp4")},
        )
        assert both.status_code == 422 and "not both" in both.json()["error"]["message"]

        unknown = http.post("/videos/video_000000000000000000000000/remix", json={"prompt": PROMPT})
        assert unknown.status_code == 404

        off_vocabulary = http.post(f"/videos/{source.id}/remix", json={"prompt": "a cat playing piano"})
        assert off_vocabulary.status_code == 422
        assert off_vocabulary.json()["error"]["code"] == "prompt_outside_vocabulary"

    other = openai.OpenAI(base_url=base_url, api_key=KEY_B, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # another key's video is none of this caller's
        other.videos.remix(source.id, prompt=PROMPT)

    queued = client.videos.create(prompt=PROMPT, extra_body={"num_frames": 33})
    client.videos.delete(queued.id)  # cancelled (or cancelling): not a completed video
    with warnings.catch_warnings(), pytest.raises(openai.ConflictError) as refused:
        client.videos.remix(queued.id, prompt=PROMPT)
    assert "only a completed video" in str(refused.value)
