"""OpenAI's official SDK against the service on a model with buckets (real Redis, a real Celery
worker on the tiny bucketed bundle: 32x32 and 48x32, 5 and 9 frames at 8 fps): OpenAI's sizes and
seconds render at the bucket the video object names, and `variant=spritesheet` is a JPEG grid of
the video's own frames (decoded and compared tile by tile), served like the other content (HEAD,
ETag, Range) and deleted with the video."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from hyv.engine.video_io import read_mp4
from hyv.service.launcher import RedisServer, start_worker, stop_worker, wait_for_workers
from hyv.service.settings import Settings
from hyv.service.spritesheet import SpritesheetLayout
from hyv.training.eval.metrics import psnr
from tests.service.conftest import MODEL, WORKER_READY_TIMEOUT_S, make_settings
from tests.service.conftest_api import KEY_A, auth

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow,
    # The SDK marks the Videos API deprecated (OpenAI is retiring Sora); the calls work the same.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

GOOD = "a red circle moving right on a black background"


@pytest.fixture(scope="module")
def bucketed_settings(
    bucketed_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Its own Redis and one worker holding the bucketed bundle."""
    folder = tmp_path_factory.mktemp("sdk-buckets")
    with RedisServer(folder / "redis", persist=False) as redis_server:
        settings = make_settings(redis_server.url, folder / "data", bucketed_bundle_dir, api_keys=[KEY_A])
        worker = start_worker(settings, "buckets", log_path=folder / "worker.log")
        try:
            wait_for_workers(redis_server.url, MODEL, 1, WORKER_READY_TIMEOUT_S)
            yield settings
        finally:
            stop_worker(worker)


@pytest.fixture
def base_url(bucketed_settings: Settings, serve_app: Callable[[Any], Any]) -> str:
    return str(serve_app(bucketed_settings).url)


@pytest.fixture
def client(base_url: str) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY_A) as sdk:
        yield sdk


def tiles(jpeg: bytes, layout: SpritesheetLayout, width: int, height: int) -> list[np.ndarray]:
    sheet = Image.open(io.BytesIO(jpeg))
    assert sheet.format == "JPEG" and sheet.mode == "RGB"
    assert sheet.size == (layout.columns * width, layout.rows * height)
    pixels = np.asarray(sheet)
    boxes = [layout.tile_box(i, width, height) for i in range(len(layout.frame_indices))]
    return [pixels[top:bottom, left:right] for left, top, right, bottom in boxes]


def test_openai_sizes_and_seconds_render_at_the_bucket_the_video_names(client: Any) -> None:
    video = client.videos.create_and_poll(
        prompt=GOOD, size="1280x720", seconds="8", extra_body={"seed": 3}, poll_interval_ms=100
    )
    assert video.status == "completed", video.error
    assert (video.size, video.seconds) == ("48x32", "1")  # the 3:2 bucket; its longest length
    assert read_mp4(client.videos.download_content(video.id).content).shape == (9, 32, 48, 3)

    portrait = client.videos.create_and_poll(prompt=GOOD, size="720x1280", seconds="4", poll_interval_ms=100)
    assert (portrait.status, portrait.size, portrait.seconds) == ("completed", "32x32", "1")
    assert read_mp4(client.videos.download_content(portrait.id).content).shape == (9, 32, 32, 3)


@pytest.mark.parametrize(("seconds", "grid"), [("1", (3, 3)), ("0.5", (2, 2))])
def test_the_spritesheet_is_a_grid_of_the_videos_frames(
    client: Any, base_url: str, bucketed_settings: Settings, seconds: str, grid: tuple[int, int]
) -> None:
    video = client.videos.create_and_poll(
        prompt=GOOD, size="48x32", seconds=seconds, extra_body={"seed": 5}, poll_interval_ms=100
    )
    assert video.status == "completed", video.error
    frames = read_mp4(client.videos.download_content(video.id).content)
    layout = SpritesheetLayout.for_frames(len(frames))
    assert (layout.columns, layout.rows) == grid
    assert layout.frame_indices[0] == 0 and layout.frame_indices[-1] == len(frames) - 1

    jpeg = client.videos.download_content(video.id, variant="spritesheet").content
    for tile, index in zip(tiles(jpeg, layout, 48, 32), layout.frame_indices, strict=True):
        assert psnr(tile, frames[index]) > 25, (index, psnr(tile, frames[index]))
    assert float(frames.std()) > 5  # a picture with content: the tiles are not trivially alike

    stored = Path(bucketed_settings.data_dir) / "spritesheets" / f"{video.id}.jpg"
    assert stored.read_bytes() == jpeg  # made once, then served from storage
    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as api:
        url = f"/v1/videos/{video.id}/content"
        got = api.get(url, params={"variant": "spritesheet"})
        assert got.status_code == 200 and got.content == jpeg
        assert got.headers["content-type"] == "image/jpeg"
        assert got.headers["content-disposition"] == f'inline; filename="{video.id}.jpg"'
        head = api.head(url, params={"variant": "spritesheet"})
        assert head.status_code == 200 and head.headers["content-type"] == "image/jpeg"
        assert (head.headers["etag"], int(head.headers["content-length"])) == (got.headers["etag"], len(jpeg))
        again = api.get(
            url, params={"variant": "spritesheet"}, headers={"If-None-Match": got.headers["etag"]}
        )
        assert again.status_code == 304
        part = api.get(url, params={"variant": "spritesheet"}, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == jpeg[:100]
    assert client.videos.delete(video.id).deleted is True
    assert not stored.exists()


def test_a_spritesheet_made_on_head_first_is_the_one_get_serves(
    client: Any, base_url: str, bucketed_settings: Settings
) -> None:
    video = client.videos.create_and_poll(prompt=GOOD, extra_body={"num_frames": 5}, poll_interval_ms=100)
    stored = Path(bucketed_settings.data_dir) / "spritesheets" / f"{video.id}.jpg"
    assert not stored.exists()  # nothing made until asked
    with httpx.Client(base_url=base_url, headers=auth(KEY_A), timeout=30) as api:
        url = f"/v1/videos/{video.id}/content"
        head = api.head(url, params={"variant": "spritesheet"})
        assert head.status_code == 200 and int(head.headers["content-length"]) == stored.stat().st_size
        got = api.get(url, params={"variant": "spritesheet"})
        assert got.headers["etag"] == head.headers["etag"] and got.content == stored.read_bytes()
        assert Image.open(io.BytesIO(got.content)).size == (2 * 32, 2 * 32)
        stored.unlink()
        (Path(bucketed_settings.data_dir) / "videos" / f"{video.id}.mp4").unlink()  # expired
        gone = api.get(url, params={"variant": "spritesheet"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "video_expired"
