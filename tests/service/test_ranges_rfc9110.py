"""GET /v1/videos/{id}/content against RFC 9110's range requests (§14, §13.1.5, §15.3.7, §15.5.17),
on a live API, with RFC 9110 §14.1.2's examples on a 10000-byte representation.

The service's choices where RFC 9110 leaves one (hyv/service/byte_ranges.py says the same):

- Several ranges: those that overlap or touch are coalesced into one (§15.3.7.2), served as one
  part, so `bytes=500-600,601-999` and `bytes=500-700,601-999` (§14.1.2's "other valid
  specifications of the second 500 bytes") are 206 `bytes 500-999/10000`. Ranges that stay apart
  (`bytes=0-0,-1`) are ignored: 200 with the whole file, never multipart/byteranges (§14.2: "A
  server MAY ignore the Range header field").
- A reversed int range (`bytes=5-2`) makes the ranges-specifier invalid (§14.1.1: "An int-range is
  invalid if the last-pos value is present and less than the first-pos"), and §14.2 lets a server
  "ignore or reject a Range header field that contains an invalid ranges-specifier": the service
  rejects it, 416, so a client with a broken range hears about it instead of receiving a file it
  did not ask for. A value with no range in it (`bytes=abc`) and another unit are ignored (200;
  another unit MUST be ignored).
- If-None-Match is evaluated first (304), then If-Range (§13.1.5: a stale validator, a weak entity
  tag, or a date that is not a strong validator sends the whole file, 200, whatever the Range),
  then the Range. HEAD ignores a Range (§14.2: only GET has range semantics).
- While the video renders its length is unknown: `bytes=N-M` is 206 `bytes N-M/*` once written,
  `bytes=N-` is 206 `bytes N-*/*` followed until the job completes (the service's one departure
  from RFC 9110's Content-Range grammar: see hyv/service/api/content_live.py), `bytes=0-`, a
  suffix and any If-Range get the whole stream (200), a reversed range is 416 without a
  Content-Range (the unsatisfied-range form needs the length).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest_api import KEY_A, auth
from tests.service.test_api_content import Download, FakeWorkerSide, submit

pytestmark = pytest.mark.timeout(120)

LENGTH = 10000
DATA = np.random.default_rng(9110).integers(0, 256, LENGTH, dtype=np.uint8).tobytes()
WHOLE = (200, None, (0, LENGTH))


@pytest.fixture
def env(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> Iterator[tuple[httpx.Client, FakeWorkerSide]]:
    settings = make_api_settings()
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client, FakeWorkerSide(settings)


@pytest.fixture
def completed(env: tuple[httpx.Client, FakeWorkerSide]) -> tuple[httpx.Client, str]:
    """A completed video of LENGTH bytes, modified a minute ago (its Last-Modified is a strong
    validator: RFC 9110 §8.8.2.2)."""
    client, worker = env
    job_id = submit(client)
    writer = worker.start(job_id)
    writer.write(DATA)
    worker.complete(job_id, writer)
    past = time.time() - 60
    os.utime(worker.storage.path(job_id), (past, past))
    return client, f"/v1/videos/{job_id}/content"


# Range -> (status, Content-Range, [start, end) of the body) on a completed 10000-byte video.
COMPLETED_TABLE: list[tuple[str, tuple[int, str | None, tuple[int, int] | None]]] = [
    # RFC 9110 §14.1.2's examples
    ("bytes=0-499", (206, "bytes 0-499/10000", (0, 500))),
    ("bytes=500-999", (206, "bytes 500-999/10000", (500, 1000))),
    ("bytes=-500", (206, "bytes 9500-9999/10000", (9500, 10000))),
    ("bytes=9500-", (206, "bytes 9500-9999/10000", (9500, 10000))),
    ("bytes=0-0,-1", WHOLE),  # first and last byte: two parts, ignored (no multipart)
    ("bytes=500-600,601-999", (206, "bytes 500-999/10000", (500, 1000))),  # coalesced
    ("bytes=500-700,601-999", (206, "bytes 500-999/10000", (500, 1000))),
    # the whole file asked as a range is a 206 of all of it
    ("bytes=0-", (206, "bytes 0-9999/10000", (0, LENGTH))),
    ("bytes=0-9999", (206, "bytes 0-9999/10000", (0, LENGTH))),
    ("bytes=-10000", (206, "bytes 0-9999/10000", (0, LENGTH))),
    ("bytes=-20000", (206, "bytes 0-9999/10000", (0, LENGTH))),  # a suffix longer than the file
    ("bytes=9990-20000", (206, "bytes 9990-9999/10000", (9990, LENGTH))),  # cut at the end
    ("bytes=9999-", (206, "bytes 9999-9999/10000", (9999, LENGTH))),
    ("bytes=0-0", (206, "bytes 0-0/10000", (0, 1))),
    ("bytes=0-9,", (206, "bytes 0-9/10000", (0, 10))),  # an empty list element skipped
    ("BYTES=0-9", (206, "bytes 0-9/10000", (0, 10))),  # the unit is case-insensitive
    # unsatisfiable: no byte of it is in the file
    ("bytes=10000-", (416, "bytes */10000", None)),
    ("bytes=20000-30000", (416, "bytes */10000", None)),
    ("bytes=-0", (416, "bytes */10000", None)),
    ("bytes=" + "9" * 3000 + "-", (416, "bytes */10000", None)),  # thousands of digits
    # invalid: a reversed int range, alone or in a list, is rejected
    ("bytes=5-2", (416, "bytes */10000", None)),
    ("bytes=0-9,5-2", (416, "bytes */10000", None)),
    # ignored: the whole file
    ("bytes=0-1,100-101", WHOLE),
    ("bytes=abc", WHOLE),
    ("bytes=", WHOLE),
    ("bytes=-", WHOLE),
    ("items=0-9", WHOLE),
    ("0-9", WHOLE),
]


@pytest.mark.parametrize(("range_", "expected"), COMPLETED_TABLE, ids=[r[:40] for r, _ in COMPLETED_TABLE])
def test_ranges_of_a_completed_video(
    completed: tuple[httpx.Client, str], range_: str, expected: tuple[int, str | None, tuple[int, int] | None]
) -> None:
    client, url = completed
    status, content_range, span = expected
    response = client.get(url, headers={"Range": range_})
    assert response.status_code == status, response.text[:300]
    assert response.headers.get("content-range") == content_range
    if span is not None:
        assert response.content == DATA[span[0] : span[1]]
        assert int(response.headers["content-length"]) == span[1] - span[0]
        assert response.headers["accept-ranges"] == "bytes" and response.headers["etag"]
    else:
        error = response.json()["error"]
        assert error["code"] == "range_not_satisfiable" and error["param"] == "Range"


def test_if_range_and_preconditions_of_a_completed_video(completed: tuple[httpx.Client, str]) -> None:
    client, url = completed
    head = client.head(url)
    etag, modified = head.headers["etag"], head.headers["last-modified"]

    def get(**headers: str) -> httpx.Response:
        return client.get(url, headers={k.replace("_", "-"): v for k, v in headers.items()})

    for validator in (etag, modified):  # the current entity tag or Last-Modified: the range
        current = get(Range="bytes=0-99", If_Range=validator)
        assert current.status_code == 206 and current.content == DATA[:100], validator
        past_end = get(Range="bytes=10000-", If_Range=validator)
        assert past_end.status_code == 416 and past_end.headers["content-range"] == "bytes */10000"
    stale = ('"video_other-10000-1"', "W/" + etag, "Mon, 01 Jan 2024 00:00:00 GMT", "not a validator")
    for validator in stale:  # the client's copy is another one: the whole current file
        for range_ in ("bytes=0-99", "bytes=10000-", "bytes=5-2"):
            whole = get(Range=range_, If_Range=validator)
            assert whole.status_code == 200 and whole.content == DATA, (validator, range_)
            assert "content-range" not in whole.headers
    assert get(If_Range='"stale"').content == DATA  # If-Range without a Range: ignored

    for range_ in ("bytes=0-99", "bytes=10000-", "bytes=5-2"):  # If-None-Match comes first: 304
        assert get(Range=range_, If_None_Match=etag).status_code == 304, range_
        assert get(Range=range_, If_None_Match="*").status_code == 304, range_
    assert get(Range="bytes=0-99", If_None_Match='"other"').status_code == 206

    head_ranged = client.head(url, headers={"Range": "bytes=0-99"})  # HEAD ignores a Range
    assert head_ranged.status_code == 200 and head_ranged.headers["content-length"] == str(LENGTH)
    assert "content-range" not in head_ranged.headers and head_ranged.headers["accept-ranges"] == "bytes"


def test_ranges_of_a_rendering_video(env: tuple[httpx.Client, FakeWorkerSide]) -> None:
    """The length is not known while the worker writes: see the module's docstring."""
    client, worker = env
    job_id = submit(client)
    writer = worker.start(job_id)
    writer.write(DATA[:3000])
    url = f"/v1/videos/{job_id}/content"

    span = client.get(url, headers={"Range": "bytes=100-199"})
    assert span.status_code == 206 and span.headers["content-range"] == "bytes 100-199/*"
    assert span.content == DATA[100:200] and span.headers["content-length"] == "100"
    merged = client.get(url, headers={"Range": "bytes=500-600,601-999"})
    assert merged.status_code == 206 and merged.headers["content-range"] == "bytes 500-999/*"
    assert merged.content == DATA[500:1000]
    for reversed_ in ("bytes=5-2", "bytes=0-9,5-2"):
        invalid = client.get(url, headers={"Range": reversed_})
        assert invalid.status_code == 416 and "content-range" not in invalid.headers
        assert invalid.json()["error"]["code"] == "range_not_satisfiable"

    whole_streams = [
        Download(client, job_id, headers)
        for headers in (
            {"Range": "bytes=0-"},
            {"Range": "bytes=-500"},
            {"Range": "bytes=0-0,-1"},
            {"Range": "bytes=100-", "If-Range": '"an-etag"'},
            {"Range": "bytes=100-", "If-Range": "Mon, 01 Jan 2024 00:00:00 GMT"},
        )
    ]
    resumed = Download(client, job_id, {"Range": "bytes=2500-"})
    past_written = Download(client, job_id, {"Range": "bytes=3000-3099"})  # waits for the bytes
    for download in [*whole_streams, resumed]:
        assert download.answered.wait(5)
    assert not past_written.answered.is_set()
    writer.write(DATA[3000:])
    worker.complete(job_id, writer)

    for download in whole_streams:
        assert download.join() == DATA
        assert download.response is not None and download.response.status_code == 200
        assert "content-range" not in download.response.headers
    assert resumed.join() == DATA[2500:]
    assert resumed.response is not None and resumed.response.status_code == 206
    assert resumed.response.headers["content-range"] == "bytes 2500-*/*"
    assert past_written.join() == DATA[3000:3100]
    assert past_written.response is not None and past_written.response.status_code == 206
    # Written before the job completed: the live span (`/*`); after: the finished file's length.
    assert past_written.response.headers["content-range"] in ("bytes 3000-3099/*", "bytes 3000-3099/10000")


def test_cross_origin_pages_can_make_and_read_range_requests(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    """A page on a configured origin may send Range and If-Range (preflight) and read the headers a
    ranged download and a rendering stream answer with."""
    origin = "http://player.example"
    server = serve_app(make_api_settings(cors_origins=[origin]))
    preflight = httpx.options(
        f"{server.url}/v1/videos/video_x/content",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,range,if-range,if-none-match",
        },
    )
    assert preflight.status_code == 200, preflight.text
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "range", "if-range", "if-none-match"} <= allowed
    head = httpx.options(
        f"{server.url}/v1/videos/video_x/content",
        headers={"Origin": origin, "Access-Control-Request-Method": "HEAD"},
    )
    assert head.status_code == 200 and "HEAD" in head.headers["access-control-allow-methods"]

    response = httpx.get(f"{server.url}/v1/models", headers={"Origin": origin, **auth(KEY_A)})
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "accept-ranges", "etag", "x-video-status", "retry-after"} <= exposed
