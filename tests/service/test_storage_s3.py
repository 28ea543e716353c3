"""S3 storage (hyv.service.storage_s3) against a real S3-compatible server: moto's, run as its own
process with IAM authentication on (tests/service/conftest_s3.py).

- S3Storage itself: the local spool and the upload (single PUT and multipart), ranged reads,
  thumbnails and input images, delete, TTL cleanup, and the errors (bucket missing, credentials
  refused, endpoint down) as StorageError;
- the API on S3 storage with the test playing the worker (as in test_api_content.py): Range/206/
  416, ETag/304/If-Range, thumbnails, delete, watching while it renders, 503 storage_error;
- end to end: a real Celery worker process with HYV_STORAGE=s3 completes a job and the API serves
  the MP4 from S3 with a 206; with the bucket gone the next job fails with `storage_error` and the
  same worker completes the one after that.
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from hyv.engine.video_io import read_mp4
from hyv.service.job_model import JobStatus
from hyv.service.job_store import JobStore
from hyv.service.settings import Settings
from hyv.service.storage import StorageError, make_storage
from hyv.service.storage_s3 import RangeNotSatisfiableError, S3Storage
from hyv.training.eval.metrics import psnr
from tests.service.conftest import Cluster, wait_until
from tests.service.conftest_api import KEY_A, auth, free_port
from tests.service.conftest_s3 import PREFIX, MotoS3, make_s3, objects
from tests.service.test_api_content import mp4_pieces, submit

pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e '.[dev]')")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def s3(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> S3Storage:
    return make_s3(moto_s3, bucket, tmp_path / "spool")


def job_id() -> str:
    from hyv.service.job_model import new_job_id

    return new_job_id()


def write_video(storage: S3Storage, vid: str, data: bytes, chunk: int = 1000) -> None:
    writer = storage.open_writer(vid)
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    writer.close()


# --- S3Storage -----------------------------------------------------------------------------------


def test_writer_spools_locally_and_uploads_on_close(s3: S3Storage, moto_s3: MotoS3, bucket: str) -> None:
    vid = job_id()
    mp4 = b"".join(mp4_pieces())
    writer = s3.open_writer(vid)
    writer.write(mp4[:500])
    assert s3.partial_path(vid).read_bytes() == mp4[:500]  # the API follows this while it grows
    assert not s3.exists(vid) and objects(moto_s3, bucket) == {}
    writer.write(mp4[500:])
    writer.close()
    assert writer.bytes_written == len(mp4)

    assert s3.exists(vid)
    assert objects(moto_s3, bucket) == {f"{PREFIX}videos/{vid}.mp4": mp4}
    head = moto_s3.client().head_object(Bucket=bucket, Key=f"{PREFIX}videos/{vid}.mp4")
    assert head["ContentType"] == "video/mp4"
    assert not s3.partial_path(vid).exists()
    with s3.video_file(vid) as local:  # the local copy the writer left, for the thumbnail
        assert local == s3.path(vid) and read_mp4(local).shape == (9, 32, 32, 3)
    assert not s3.path(vid).exists()  # ...gone once read
    with s3.video_file(vid) as downloaded:  # no local copy: downloaded, then removed
        assert downloaded.read_bytes() == mp4
    assert not downloaded.exists()
    assert [p.name for p in s3.videos.iterdir()] == []


def test_big_video_goes_up_in_multipart(s3: S3Storage, moto_s3: MotoS3, bucket: str) -> None:
    vid = job_id()
    data = os.urandom(19 * 2**20)  # parts of 8 + 8 + 3 MiB
    write_video(s3, vid, data, chunk=2**20)
    info = s3.head(vid, "video")
    assert info is not None and info.size == len(data)
    assert info.etag.endswith('-3"'), info.etag  # S3's ETag of a 3-part multipart upload
    assert objects(moto_s3, bucket)[f"{PREFIX}videos/{vid}.mp4"] == data


def test_ranged_reads(s3: S3Storage) -> None:
    vid = job_id()
    data = bytes(range(256)) * 40
    write_video(s3, vid, data)

    def read(byte_range: str | None) -> tuple[bytes, str | None, int]:
        obj = s3.open_object(vid, "video", byte_range)
        assert obj is not None
        return b"".join(obj.chunks(1000)), obj.content_range, obj.size

    assert read(None) == (data, None, len(data))
    assert read("bytes=0-99") == (data[:100], f"bytes 0-99/{len(data)}", len(data))
    assert read("bytes=-64")[0] == data[-64:]
    assert read(f"bytes=100-{len(data) + 500}")[0] == data[100:]
    with pytest.raises(RangeNotSatisfiableError) as excinfo:
        s3.open_object(vid, "video", f"bytes={len(data) + 10}-")
    assert excinfo.value.size == len(data)
    obj = s3.open_object(vid, "video")
    info = s3.head(vid, "video")
    assert obj is not None and info is not None
    obj.close()
    assert obj.etag == info.etag and obj.etag.startswith('"')
    assert s3.open_object(job_id(), "video") is None and s3.head(job_id(), "video") is None


def test_thumbnails_and_input_images(s3: S3Storage, moto_s3: MotoS3, bucket: str) -> None:
    vid = job_id()
    assert s3.load_input_image(vid) is None
    s3.save_input_image(vid, b"\x89PNG image bytes")
    assert s3.load_input_image(vid) == b"\x89PNG image bytes"
    s3.save_thumbnail(vid, b"thumbnail png")
    thumb = s3.open_object(vid, "thumbnail")
    assert thumb is not None and thumb.content_type == "image/png"
    assert b"".join(thumb.chunks()) == b"thumbnail png"
    assert set(objects(moto_s3, bucket)) == {f"{PREFIX}images/{vid}", f"{PREFIX}thumbnails/{vid}.png"}


def test_delete_and_abort(s3: S3Storage, moto_s3: MotoS3, bucket: str) -> None:
    kept, gone = job_id(), job_id()
    for vid in (kept, gone):
        s3.save_input_image(vid, b"image")
        write_video(s3, vid, b"video " + vid.encode())
        s3.save_thumbnail(vid, b"png")
    s3.delete(gone)
    assert not s3.exists(gone) and s3.load_input_image(gone) is None
    assert all(gone not in key for key in objects(moto_s3, bucket))
    assert len(objects(moto_s3, bucket)) == 3 and s3.exists(kept)
    s3.delete(job_id())  # nothing there: no error

    aborted = job_id()
    writer = s3.open_writer(aborted)
    writer.write(b"half a video")
    writer.abort()
    assert not s3.partial_path(aborted).exists() and not s3.exists(aborted)


def test_cleanup_expired(s3: S3Storage, moto_s3: MotoS3, bucket: str) -> None:
    old, new = job_id(), job_id()
    s3.save_input_image(old, b"old image")
    write_video(s3, old, b"old video")
    s3.save_thumbnail(old, b"old png")
    time.sleep(2.2)  # S3 dates are truncated to the second: keep the two writes > 2 s apart
    cut = time.time()
    write_video(s3, new, b"new video")
    orphan_spool = s3.partial_path(job_id())
    orphan_spool.write_bytes(b"a crashed writer's spool")
    os.utime(orphan_spool, (cut - 1000, cut - 1000))
    fresh_spool = s3.partial_path(job_id())
    fresh_spool.write_bytes(b"a running writer's spool")

    now = time.time()
    # old's date <= cut - 2.2; new's date >= cut - 1 (truncation): a TTL between the two picks `old`
    ttl = now - cut + 1.5
    assert s3.cleanup_expired(now, ttl_seconds=ttl) == [old]
    assert set(objects(moto_s3, bucket)) == {f"{PREFIX}videos/{new}.mp4"}
    assert not orphan_spool.exists() and fresh_spool.exists()
    assert s3.cleanup_expired(now) == []  # the storage's own TTL (a day): nothing


def test_errors_are_storage_errors_with_the_cause(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    vid = job_id()
    missing = make_s3(moto_s3, f"hyv-missing-{uuid.uuid4().hex[:8]}", tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        missing.load_input_image(vid)
    with pytest.raises(StorageError, match="does not exist"):
        missing.check()
    writer = missing.open_writer(vid)  # the spool is local: opening works...
    writer.write(b"frames")
    with pytest.raises(StorageError, match=r"upload of the video failed: bucket .* does not exist"):
        writer.close()  # ...the upload does not, and the spool stays for abort()
    writer.abort()
    assert not missing.partial_path(vid).exists()

    wrong_secret = make_s3(moto_s3, bucket, tmp_path, secret_access_key="not-the-secret")
    with pytest.raises(StorageError, match="refused the credentials") as excinfo:
        wrong_secret.save_thumbnail(vid, b"png")
    assert "not-the-secret" not in str(excinfo.value)
    unknown_key = make_s3(moto_s3, bucket, tmp_path, access_key_id="AKIAUNKNOWN0000000000")
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        unknown_key.load_input_image(vid)
    with pytest.raises(StorageError, match="access denied"):  # a HEAD's 403 carries no error code
        unknown_key.exists(vid)

    down = make_s3(
        moto_s3, bucket, tmp_path, endpoint_url=f"http://127.0.0.1:{free_port()}", timeout_seconds=1
    )
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable"):
        down.load_input_image(vid)
    with pytest.raises(StorageError, match="unreachable"):
        down.delete(vid)
    assert time.monotonic() - start < 10


def test_settings_select_s3(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, **moto_s3.settings(bucket))
    storage = make_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (bucket, PREFIX)
    storage.check()
    assert moto_s3.secret_access_key not in repr(storage) + repr(settings)
    with pytest.raises(ValueError, match="s3_bucket"):
        Settings(storage="s3")


# --- the API on S3 storage, the test playing the worker --------------------------------------------


class S3WorkerSide:
    """What the worker does with S3 storage: spool, upload on close, thumbnail, final state."""

    def __init__(self, settings: Settings) -> None:
        self.store = JobStore.from_url(settings.redis_url or "")
        self.storage = S3Storage.from_settings(settings)

    def start(self, vid: str) -> Any:
        self.store.jobs.update(
            vid, status=JobStatus.IN_PROGRESS, started_at=int(time.time()), stage="denoise"
        )
        return self.storage.open_writer(vid)

    def complete(self, vid: str, writer: Any, thumbnail: bytes | None = None) -> None:
        writer.close()
        with self.storage.video_file(vid) as path:
            assert path.stat().st_size == writer.bytes_written
        if thumbnail:
            self.storage.save_thumbnail(vid, thumbnail)
        self.store.jobs.update(
            vid,
            status=JobStatus.COMPLETED,
            progress=100,
            completed_at=int(time.time()),
            content_bytes=writer.bytes_written,
        )


@pytest.fixture
def s3_env(
    make_api_settings: Callable[..., Settings], serve_app: Any, moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> Iterator[tuple[httpx.Client, S3WorkerSide]]:
    """The API on S3 storage; the 'worker' has its own data_dir (another box: no shared spool)."""
    settings = make_api_settings(**moto_s3.settings(bucket))
    server = serve_app(settings)
    worker_settings = settings.model_copy(update={"data_dir": tmp_path / "worker-box"})
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client, S3WorkerSide(worker_settings)


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_api_serves_s3_content_with_ranges_and_etag(s3_env: tuple[httpx.Client, S3WorkerSide]) -> None:
    client, worker = s3_env
    vid = submit(client)
    mp4 = b"".join(mp4_pieces())
    writer = worker.start(vid)
    writer.write(mp4)
    worker.complete(vid, writer, thumbnail=png((10, 200, 10)))
    info = worker.storage.head(vid, "video")
    assert info is not None

    url = f"/v1/videos/{vid}/content"
    full = client.get(url)
    assert full.status_code == 200 and full.content == mp4
    assert full.headers["content-type"] == "video/mp4"
    assert int(full.headers["content-length"]) == len(mp4)
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["etag"] == info.etag  # S3's
    assert read_mp4(full.content).shape == (9, 32, 32, 3)

    part = client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == mp4[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(mp4)}"
    assert part.headers["content-length"] == "100"
    assert client.get(url, headers={"Range": "bytes=-64"}).content == mp4[-64:]
    middle = client.get(url, headers={"Range": f"bytes=100-{len(mp4) + 500}"})
    assert middle.status_code == 206 and middle.content == mp4[100:]
    beyond = client.get(url, headers={"Range": f"bytes={len(mp4) + 10}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(mp4)}"
    several = client.get(url, headers={"Range": "bytes=0-9,20-29"})  # S3 serves one range: all of it
    assert several.status_code == 200 and several.content == mp4

    etag = full.headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    if_range = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert if_range.status_code == 206 and if_range.content == mp4[:10]
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == mp4

    thumb = client.get(url, params={"variant": "thumbnail"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).getpixel((5, 5)) == (10, 200, 10)

    # HEAD: the same headers from S3's HEAD, no body.
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(mp4)) and head.headers["etag"] == etag
    assert head.headers["accept-ranges"] == "bytes" and head.headers["content-type"] == "video/mp4"
    assert client.head(url, headers={"If-None-Match": etag}).status_code == 304
    thumb_head = client.head(url, params={"variant": "thumbnail"})
    assert thumb_head.status_code == 200 and thumb_head.headers["content-type"] == "image/png"
    assert thumb_head.headers["content-length"] == str(len(thumb.content))

    assert client.delete(f"/v1/videos/{vid}").json()["deleted"] is True
    assert not worker.storage.exists(vid) and worker.storage.head(vid, "thumbnail") is None


def test_api_makes_the_spritesheet_from_the_video_in_s3(
    s3_env: tuple[httpx.Client, S3WorkerSide], moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    """On its first request the API downloads the MP4 from S3, stores the spritesheet there (no
    local copy left behind) and serves it like the other content; delete removes it too."""
    from hyv.service.spritesheet import SpritesheetLayout

    client, worker = s3_env
    vid = submit(client)
    mp4 = b"".join(mp4_pieces())  # 9 random 32x32 frames
    writer = worker.start(vid)
    writer.write(mp4)
    worker.complete(vid, writer)
    url = f"/v1/videos/{vid}/content"
    assert worker.storage.head(vid, "spritesheet") is None
    sheet = client.get(url, params={"variant": "spritesheet"})
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
    stored = objects(moto_s3, bucket)[f"{PREFIX}spritesheets/{vid}.jpg"]
    assert stored == sheet.content
    info = worker.storage.head(vid, "spritesheet")
    assert info is not None and info.content_type == "image/jpeg" and sheet.headers["etag"] == info.etag
    assert not list((tmp_path / "data" / "videos").glob("*"))  # the API's download is gone

    layout, frames = SpritesheetLayout.for_frames(9), read_mp4(mp4)
    pixels = np.asarray(Image.open(io.BytesIO(sheet.content)))
    assert pixels.shape == (3 * 32, 3 * 32, 3)
    for tile, index in enumerate(layout.frame_indices):
        left, top, right, bottom = layout.tile_box(tile, 32, 32)
        assert psnr(pixels[top:bottom, left:right], frames[index]) > 25
    head = client.head(url, params={"variant": "spritesheet"})
    assert head.headers["etag"] == info.etag and head.headers["content-length"] == str(len(stored))

    assert client.delete(f"/v1/videos/{vid}").json()["deleted"] is True
    assert not any(vid in key for key in objects(moto_s3, bucket))


def test_api_stream_while_rendering_with_s3(
    make_api_settings: Callable[..., Settings], serve_app: Any, moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    """An API process on the worker's box (same data_dir) follows the spool as it grows; one on
    another box starts streaming once the video is in S3. Both receive the whole file."""
    same_box_settings = make_api_settings(**moto_s3.settings(bucket))
    other_box_settings = make_api_settings(data_dir=tmp_path / "other-box", **moto_s3.settings(bucket))
    urls = {"same": serve_app(same_box_settings).url, "other": serve_app(other_box_settings).url}
    worker = S3WorkerSide(same_box_settings)
    with httpx.Client(base_url=urls["same"], headers=auth(KEY_A), timeout=30) as client:
        vid = submit(client)
    pieces = mp4_pieces()
    received: dict[str, list[tuple[float, bytes]]] = {"same": [], "other": []}
    errors: list[BaseException] = []

    def watch(name: str) -> None:
        try:
            with (
                httpx.Client(base_url=urls[name], headers=auth(KEY_A), timeout=30) as c,
                c.stream("GET", f"/v1/videos/{vid}/content") as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    received[name].append((time.monotonic(), chunk))
        except BaseException as exc:
            errors.append(exc)

    watchers = [threading.Thread(target=watch, args=(name,)) for name in urls]
    for w in watchers:
        w.start()
    time.sleep(0.3)
    writer = worker.start(vid)
    for piece in pieces:
        writer.write(piece)
        time.sleep(0.05)
    completed_at = time.monotonic()
    worker.complete(vid, writer)
    for w in watchers:
        w.join(20)
    assert not errors, errors
    mp4 = b"".join(pieces)
    for name in urls:
        assert b"".join(chunk for _, chunk in received[name]) == mp4, name
    assert received["same"][0][0] < completed_at  # bytes flowed while it rendered
    assert received["other"][0][0] >= completed_at  # nothing local to follow: from S3 afterwards
    assert list(worker.storage.videos.iterdir()) == []  # the spool and the local copy are gone


def test_api_answers_503_when_s3_fails(
    make_api_settings: Callable[..., Settings], serve_app: Any, moto_s3: MotoS3
) -> None:
    settings = make_api_settings(**moto_s3.settings(f"hyv-missing-{uuid.uuid4().hex[:8]}"))
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        vid = submit(client)
        JobStore.from_url(settings.redis_url or "").jobs.update(vid, status=JobStatus.COMPLETED, progress=100)
        response = client.get(f"/v1/videos/{vid}/content")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_error"


# --- end to end: a real worker process with HYV_STORAGE=s3 ------------------------------------------


def test_worker_on_s3_end_to_end(
    cluster: Callable[..., Cluster], serve_app: Any, moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    c = cluster(workers=1, **moto_s3.settings(bucket))
    api = serve_app(c.settings)
    s3 = S3Storage.from_settings(c.settings)

    def run_job() -> dict[str, Any]:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            created = client.post(
                "/v1/videos", json={"prompt": "a red circle", "size": "48x32", "num_frames": 9, "steps": 3}
            )
            assert created.status_code == 201, created.text
            vid = created.json()["id"]

            def done() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get(f"/v1/videos/{vid}").json()
                return body if body["status"] in ("completed", "failed", "cancelled") else None

            result: dict[str, Any] = wait_until(done, 120, 0.1)
            return result

    job = run_job()
    assert job["status"] == "completed", job
    vid = job["id"]
    with httpx.Client(base_url=api.url, timeout=30) as client:
        part = client.get(f"/v1/videos/{vid}/content", headers={"Range": "bytes=0-1023"})
        full = client.get(f"/v1/videos/{vid}/content")
        thumb = client.get(f"/v1/videos/{vid}/content", params={"variant": "thumbnail"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 0-1023/{len(full.content)}"
    assert part.content == full.content[:1024]
    assert full.status_code == 200 and read_mp4(full.content).shape == (9, 32, 48, 3)
    info = s3.head(vid, "video")
    assert info is not None and full.headers["etag"] == info.etag
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert image.size == (48, 32)
    assert [p.name for p in (c.settings.data_dir / "videos").iterdir()] == []  # nothing left locally

    # The bucket goes away: the job fails with storage_error, and the worker lives on.
    client_s3 = moto_s3.client()
    for key in objects(moto_s3, bucket):
        client_s3.delete_object(Bucket=bucket, Key=key)
    client_s3.delete_bucket(Bucket=bucket)
    failed = run_job()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "storage_error"
    assert "does not exist" in failed["error"]["message"]
    client_s3.create_bucket(Bucket=bucket)
    again = run_job()
    assert again["status"] == "completed", again
    assert all(w.poll() is None for w in c.workers)
    assert s3.exists(again["id"])
