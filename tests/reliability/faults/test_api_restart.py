"""The API restarted (SIGKILL, then `hyv serve --workers 0` again on the same port) while a client
streams GET /v1/videos/{id}/content of a job that is rendering: the client resumes with a Range
request from the byte it had reached, and the bytes it got in all equal the final file, a valid MP4
with the frames it asked for. The worker never notices: the job completes once.

    resume_after_completion  the API comes back after the job completed: 206 from the offset
    resume_while_rendering   the API comes back at once; if the job still renders the server
                             streams it from the start (200: a Range on a growing file is not
                             served) and the client drops the bytes it already has
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx
import pytest

from engine.video_io import read_mp4
from service.jobs import JobStatus
from tests.reliability.faults.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2
# The MP4's header (~760 bytes) is written before denoising starts, its frames once decoded: a few
# seconds apart with this many steps, so the API dies between the two.
BIG = {"width": 128, "height": 128, "num_frames": 17, "steps": 300}
HEADERS = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(workers=1)
    stack.start_api()
    return stack


def stream_until_cut(stack: Stack, video_id: str) -> bytes:
    """GET the content from the start (the server waits for the first fragment, then follows the
    growing file); SIGKILL the API once the first bytes arrived, while the job still renders;
    return every byte received before the connection broke."""
    got = bytearray()
    with (
        httpx.Client(base_url=stack.api_url, headers=HEADERS, timeout=60) as client,
        client.stream("GET", f"/v1/videos/{video_id}/content") as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers.get("x-video-status") in ("queued", "in_progress")
        with pytest.raises(httpx.HTTPError):  # incomplete chunked read: the API died mid-stream
            for chunk in response.iter_raw():  # whatever arrived: the header comes seconds early
                got += chunk
                if stack.api is not None:
                    stack.kill_api(signal.SIGKILL)
    assert got, "no byte arrived before the API was killed"
    return bytes(got)


def resume(stack: Stack, video_id: str, have: bytes) -> tuple[bytes, int]:
    """The rest of the file with `Range: bytes=<len(have)>-`; returns (the whole file, status)."""
    with httpx.Client(base_url=stack.api_url, headers=HEADERS, timeout=60) as client:
        response = client.get(f"/v1/videos/{video_id}/content", headers={"Range": f"bytes={len(have)}-"})
    if response.status_code == 206:
        start = int(response.headers["content-range"].split()[1].split("-")[0])
        assert start == len(have), response.headers["content-range"]
        return have + response.content, 206
    assert response.status_code == 200, response.text
    assert response.content[: len(have)] == have  # the start we already had, byte for byte
    return response.content, 200


@pytest.mark.parametrize("variant", ["resume_after_completion", "resume_while_rendering"])
def test_api_restart_while_streaming_resumes_with_range(
    stack: Stack, variant: str, record_faults: Callable[..., None]
) -> None:
    statuses = []
    if stack.api is None:  # an earlier test failed with the API down
        stack.start_api()
    for _ in range(ROUNDS):
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            created = client.post("/v1/videos", json={"prompt": "a blue square", **_api_fields(BIG)})
        assert created.status_code == 201, created.text
        video_id = created.json()["id"]
        have = stream_until_cut(stack, video_id)
        if variant == "resume_after_completion":
            done = stack.finished(video_id, 120)
            assert done.status == JobStatus.COMPLETED, done.error_message
        stack.start_api()
        whole, status = resume(stack, video_id, have)
        statuses.append(status)
        if variant == "resume_after_completion":
            assert status == 206

        final = stack.assert_completed(video_id, frames=BIG["num_frames"])
        assert len(have) < len(whole) and whole == stack.video_path(video_id).read_bytes()
        assert len(whole) == final.content_bytes
        assert read_mp4(stack.video_path(video_id)).shape == (17, 128, 128, 3)
    record_faults(ROUNDS, resume_statuses=",".join(map(str, statuses)))


def _api_fields(request: dict[str, int]) -> dict[str, object]:
    return {
        "size": f"{request['width']}x{request['height']}",
        "num_frames": request["num_frames"],
        "steps": request["steps"],
    }
