"""The API restarted (SIGKILL, then `hyv serve --workers 0` again on the same port) while a client
streams GET /v1/videos/{id}/content of a job that is rendering: the client resumes with a Range
request from the byte it had reached, and the bytes it got in all equal the final file, a valid MP4
with the frames it asked for. The worker never notices: the job completes once.

    resume_after_completion  the API comes back after the job completed: 206 from the offset, of
                             the finished file
    resume_while_rendering   the API comes back at once, the job still renders: 206 from the
                             offset (`Content-Range: bytes N-*/*`), the server waiting for the
                             bytes past N and following the growing file until the job completes
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx
import pytest

from hyv.engine.video_io import read_mp4
from hyv.service.job_model import JobStatus
from tests.reliability.faults.conftest import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2
# The MP4's header (~760 bytes) is written before denoising starts, its frames once decoded: a few
# seconds apart with this many steps, so the API dies between the two.
BIG = {"width": 128, "height": 128, "num_frames": 17, "steps": 300}
# resume_while_rendering: denoising outlasts the API's restart (a few seconds) by a margin.
LONGER = {**BIG, "steps": 900}
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


def resume(stack: Stack, video_id: str, have: bytes) -> tuple[bytes, str]:
    """The rest of the file with `Range: bytes=<len(have)>-`, which must be a 206 from exactly
    there (the growing file followed, or the finished file if the job completed while the server
    waited for those bytes); returns (the whole file, the job's status when the request was sent)."""
    job = stack.store.jobs.get(video_id)
    assert job is not None
    with httpx.Client(base_url=stack.api_url, headers=HEADERS, timeout=120) as client:
        response = client.get(f"/v1/videos/{video_id}/content", headers={"Range": f"bytes={len(have)}-"})
    assert response.status_code == 206, (response.status_code, response.text[:500])
    content_range = response.headers["content-range"]
    assert content_range.startswith(f"bytes {len(have)}-"), content_range
    if "x-video-status" in response.headers:  # followed while rendering: the length was not known
        assert content_range == f"bytes {len(have)}-*/*"
    return have + response.content, job.status.value


@pytest.mark.parametrize("variant", ["resume_after_completion", "resume_while_rendering"])
def test_api_restart_while_streaming_resumes_with_range(
    stack: Stack, variant: str, record_faults: Callable[..., None]
) -> None:
    statuses = []
    if stack.api is None:  # an earlier test failed with the API down
        stack.start_api()
    request = BIG if variant == "resume_after_completion" else LONGER
    for _ in range(ROUNDS):
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            created = client.post("/v1/videos", json={"prompt": "a blue square", **_api_fields(request)})
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
            assert status == "completed"

        final = stack.assert_completed(video_id, frames=BIG["num_frames"])
        assert len(have) < len(whole) and whole == stack.video_path(video_id).read_bytes()
        assert len(whole) == final.content_bytes
        assert read_mp4(stack.video_path(video_id)).shape == (17, 128, 128, 3)
    if variant == "resume_while_rendering":  # resumed mid-render (not only once it had completed)
        assert "in_progress" in statuses, statuses
    record_faults(ROUNDS, resumed_while=",".join(statuses))


def _api_fields(request: dict[str, int]) -> dict[str, object]:
    return {
        "size": f"{request['width']}x{request['height']}",
        "num_frames": request["num_frames"],
        "steps": request["steps"],
    }
