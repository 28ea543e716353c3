"""OpenAI's API conventions over the real API (real Redis, a live uvicorn server, no worker: jobs stay
queued), by raw HTTP and through the official SDK: OpenAI's sizes and seconds mapped onto the
model's buckets, `x-should-retry: false` on the errors a retry cannot fix (the SDK then fails at
once), `openai-poll-after-ms` while a job is unfinished, and 501/405/404 in the error schema for
what this server does not offer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from hyv.service.job_model import JobStatus
from hyv.service.job_store import JobStore
from tests.service.conftest_api import KEY_A, auth

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(120),
    # The SDK marks the Videos API deprecated (OpenAI is retiring Sora); the calls work the same.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

GOOD = "a red circle moving left on a black background"
ERROR_FIELDS = {"code", "message", "param", "type"}


@pytest.fixture
def bucketed(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any], bucketed_bundle_dir: Path
) -> Iterator[httpx.Client]:
    """The API of a model with buckets: sizes 32x32 and 48x32, 5 and 9 frames at 8 fps."""
    server = serve_app(make_api_settings(weights=bucketed_bundle_dir))
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client


def multipart(client: httpx.Client, fields: dict[str, Any]) -> httpx.Response:
    """As the OpenAI SDK sends it (a dummy part forces multipart without a file)."""
    return client.post("/v1/videos", data={k: str(v) for k, v in fields.items()}, files={"_": (None, "")})


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    return dict(body["error"])


# --- sizes and seconds --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "size", "frames", "seconds"),
    [
        # The SDK's sizes and seconds: landscape to the 3:2 bucket, portrait and square to 1:1.
        ({"size": "1280x720", "seconds": "8"}, "48x32", 9, "1"),
        ({"size": "1792x1024", "seconds": "12"}, "48x32", 9, "1"),
        ({"size": "720x1280", "seconds": "4"}, "32x32", 9, "1"),
        ({"size": "1024x1792"}, "32x32", 5, "0.5"),
        ({"size": "64x64"}, "32x32", 5, "0.5"),  # the same aspect ratio, another area
        ({"size": "96x64"}, "48x32", 5, "0.5"),
        ({"size": " 48 X 32 "}, "48x32", 5, "0.5"),  # a bucket as it is
        ({"seconds": "0.5"}, "32x32", 5, "0.5"),
        ({"seconds": "0.1"}, "32x32", 5, "0.5"),  # never a still image for a duration
        ({"seconds": "0.75"}, "32x32", 9, "1"),  # 7 frames: as near 5 as 9, the longer wins
        ({"seconds": "0.7"}, "32x32", 5, "0.5"),
        ({"seconds": "1", "fps": 12}, "32x32", 9, f"{8 / 12:g}"),  # 13 frames at 12 fps -> 9
        ({"seconds": "8", "num_frames": 5}, "32x32", 5, "0.5"),  # num_frames wins, as it is
    ],
)
@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_openai_sizes_and_seconds_map_onto_the_buckets(
    bucketed: httpx.Client, encoding: str, fields: dict[str, Any], size: str, frames: int, seconds: str
) -> None:
    body = {"prompt": GOOD, **fields}
    response = bucketed.post("/v1/videos", json=body) if encoding == "json" else multipart(bucketed, body)
    assert response.status_code == 201, response.text
    video = response.json()
    assert (video["size"], video["num_frames"], video["seconds"]) == (size, frames, seconds)
    assert bucketed.get(f"/v1/videos/{video['id']}").json()["size"] == size


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"size": "abc"}, "size", "size must be 'WIDTHxHEIGHT' such as '128x128', got 'abc'"),
        ({"size": "0x0"}, "size", "size '0x0': width and height must be 1 to 4096 pixels"),
        ({"size": "4097x4096"}, "size", "size '4097x4096': width and height must be 1 to 4096 pixels"),
        ({"size": "-32x32"}, "size", "got '-32x32'"),
        ({"size": "32x32x32"}, "size", "got '32x32x32'"),
        (
            {"size": "16x160"},
            "size",
            "size 16x160: its aspect ratio (0.1) is not within a factor of 2 of any of this model's "
            "sizes: 32x32, 48x32",
        ),
        (
            {"size": "1280x320"},
            "size",
            "size 1280x320: its aspect ratio (4) is not within a factor of 2 of any of this model's "
            "sizes: 32x32, 48x32",
        ),
        ({"seconds": "0"}, "seconds", "seconds must be more than 0 and less than 3600, got '0'"),
        ({"seconds": "-4"}, "seconds", "got '-4'"),
        ({"seconds": "nan"}, "seconds", "got 'nan'"),
        ({"seconds": "inf"}, "seconds", "got 'inf'"),
        ({"seconds": "3600"}, "seconds", "got '3600'"),
        ({"seconds": "soon"}, "seconds", "seconds must be a number such as '4', got 'soon'"),
        # An explicit num_frames stays exact.
        ({"num_frames": 7}, "num_frames", "num_frames 7 is not one of this model's lengths: 5, 9 frames"),
        ({"num_frames": 17, "seconds": "2"}, "num_frames", "num_frames 17 is not one of this model's"),
    ],
)
def test_nonsense_sizes_and_seconds_are_still_422(
    bucketed: httpx.Client, fields: dict[str, Any], param: str, message: str
) -> None:
    error = error_of(multipart(bucketed, {"prompt": GOOD, **fields}), 422)
    assert error["param"] == param
    assert message in error["message"]
    assert bucketed.get("/v1/videos").json()["data"] == []


def test_a_model_without_buckets_keeps_exact_sizes_and_snaps_seconds(api: httpx.Client) -> None:
    """The tiny model takes any multiple of 16 up to 64x64 and any 4n+1 up to 9 frames."""
    error = error_of(multipart(api, {"prompt": "a red circle", "size": "1280x720"}), 422)
    assert (
        error["param"] == "size"
        and "width must be a multiple of 16 in [16, 64], got 1280" in error["message"]
    )
    video = multipart(api, {"prompt": "a red circle", "size": "64x48", "seconds": "8"}).json()
    assert (video["size"], video["num_frames"], video["seconds"]) == ("64x48", 9, "1")


def test_the_job_records_what_was_asked(bucketed: httpx.Client) -> None:
    """`size`/`seconds` say what is rendered; `requested_size`/`requested_seconds` what was asked."""
    asked = multipart(bucketed, {"prompt": GOOD, "size": "1280x720", "seconds": "8"}).json()
    assert (asked["size"], asked["seconds"]) == ("48x32", "1")
    assert (asked["requested_size"], asked["requested_seconds"]) == ("1280x720", "8")
    again = bucketed.get(f"/v1/videos/{asked['id']}").json()
    assert (again["requested_size"], again["requested_seconds"]) == ("1280x720", "8")
    plain = bucketed.post("/v1/videos", json={"prompt": GOOD}).json()
    assert (plain["requested_size"], plain["requested_seconds"]) == (None, None)


# --- retries ------------------------------------------------------------------------------------


def test_errors_a_retry_cannot_fix_say_so(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    server = serve_app(make_api_settings(max_body_bytes=64 * 1024, rate_limit_per_minute=4))
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as api:
        video = multipart(api, {"prompt": "a red circle", "num_frames": 5}).json()
        api.delete(f"/v1/videos/{video['id']}")  # queued: cancelled at once
        final = {
            401: httpx.get(f"{server.url}/v1/videos"),
            404: api.get("/v1/videos/video_0123456789abcdef01234567"),
            405: api.put(f"/v1/videos/{video['id']}"),
            409: api.get(f"/v1/videos/{video['id']}/content"),
            413: api.post(
                "/v1/videos", content=b"x" * (65 * 1024), headers={"Content-Type": "application/json"}
            ),
            422: multipart(api, {"prompt": "a red circle", "size": "abc"}),
            501: api.post("/v1/videos/characters", json={"name": "cat"}),
        }
        for status, response in final.items():
            error_of(response, status)
            assert response.headers.get("x-should-retry") == "false", (status, response.headers)
        for _ in range(4):  # over the rate limit: a retry after Retry-After works
            limited = multipart(api, {"prompt": "a red circle", "num_frames": 5})
        error_of(limited, 429)
        assert "x-should-retry" not in limited.headers and int(limited.headers["retry-after"]) >= 1
        assert "x-should-retry" not in api.get(f"/v1/videos/{video['id']}").headers  # a success


def test_the_sdk_fails_at_once_on_a_cancelled_videos_content(api: httpx.Client) -> None:
    """With its default retries (2) the SDK would retry a 409 twice, with backoff (over 1 s)."""
    base_url = f"{str(api.base_url).rstrip('/')}/v1"
    with openai.OpenAI(base_url=base_url, api_key=KEY_A) as client:
        assert client.max_retries == 2
        video = client.videos.create(prompt="a red circle", extra_body={"num_frames": 5})
        assert client.videos.delete(video.id).status == "cancelled"
        start = time.perf_counter()
        with pytest.raises(openai.ConflictError) as conflict:
            client.videos.download_content(video.id)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, elapsed
        assert conflict.value.response.headers["x-should-retry"] == "false"
        assert conflict.value.code == "video_not_available"

        start = time.perf_counter()
        with pytest.raises(openai.InternalServerError) as unsupported:
            client.videos.get_character("char_123")
        assert time.perf_counter() - start < 0.5
        assert unsupported.value.status_code == 501 and unsupported.value.code == "unsupported_feature"


# --- openai-poll-after-ms -------------------------------------------------------------------------


def test_poll_after_while_queued_or_in_progress_only(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    settings = make_api_settings()
    server = serve_app(settings)
    store = JobStore.from_url(settings.redis_url)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as api:
        created = multipart(api, {"prompt": "a red circle", "num_frames": 5})
        video_id = created.json()["id"]
        assert created.headers["openai-poll-after-ms"] == "250"
        for status, header in (
            (JobStatus.QUEUED, "250"),
            (JobStatus.IN_PROGRESS, "250"),
            (JobStatus.COMPLETED, None),
            (JobStatus.FAILED, None),
        ):
            store.jobs.update(video_id, status=status)
            answer = api.get(f"/v1/videos/{video_id}")
            assert answer.json()["status"] == status.value
            assert answer.headers.get("openai-poll-after-ms") == header, status


# --- what this server does not offer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/videos/characters", {"json": {"name": "cat"}}),
        (
            "POST",
            "/v1/videos/characters",
            {"files": {"video": ("v.mp4", b"\x00" * 64)}, "data": {"name": "c"}},
        ),
        ("GET", "/v1/videos/characters/char_123", {}),
    ],
)
def test_characters_are_501_naming_the_feature(
    api: httpx.Client, method: str, path: str, kwargs: Any
) -> None:
    error = error_of(api.request(method, path, **kwargs), 501)
    assert error["code"] == "unsupported_feature"
    assert error["type"] == "not_implemented_error"
    assert error["message"].startswith("characters are not supported by this server")


@pytest.mark.parametrize(
    ("method", "path", "feature"),
    [
        ("POST", "/v1/chat/completions", "Chat Completions"),
        ("POST", "/v1/images/generations", "Images"),
        ("POST", "/v1/embeddings", "Embeddings"),
        ("GET", "/v1/files", "Files"),
        ("DELETE", "/v1/files/file_1", "Files"),
        ("POST", "/v1/responses", "Responses"),
    ],
)
def test_the_rest_of_openais_api_is_501_naming_it(
    api: httpx.Client, method: str, path: str, feature: str
) -> None:
    error = error_of(api.request(method, path, json={}), 501)
    assert error["code"] == "unsupported_feature"
    assert error["message"] == (
        f"OpenAI's {feature} API ({method} {path}) is not supported by this server: this server offers "
        "OpenAI's Videos API (/v1/videos) and /v1/models"
    )


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/videos/video_0123456789abcdef01234567", "GET, DELETE"),
        ("PATCH", "/v1/videos/whatever", "GET, DELETE"),
        ("POST", "/v1/videos/whatever", "GET, DELETE"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/v1/videos/video_0123456789abcdef01234567/events", "GET"),
    ],
)
def test_a_method_a_path_does_not_take_is_405_in_the_schema(
    api: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = api.request(method, path)
    error = error_of(response, 405)
    assert (error["code"], error["type"]) == ("method_not_allowed", "invalid_request_error")
    assert error["message"] == f"{method} is not allowed on {path}; it takes {allow}"
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/videos/whatever/else"), ("POST", "/v1/vidoes"), ("GET", "/v1/"), ("HEAD", "/v1/nothing")],
)
def test_other_v1_paths_are_404_in_the_schema(api: httpx.Client, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 404
    if method != "HEAD":
        error = error_of(response, 404)
        assert (error["code"], error["type"]) == ("not_found", "not_found_error")
        assert error["message"] == f"no route for {method} {path}"
    unknown_video = error_of(api.get("/v1/videos/whatever"), 404)  # the video route's own 404
    assert unknown_video["message"] == "no video 'whatever' for this API key"


def test_the_unsupported_routes_shadow_no_video_route(make_api_settings: Callable[..., Any]) -> None:
    """Under /v1/videos they take the characters' paths only, so every other /v1/videos route is
    reached wherever it is registered (remix, extensions and edits are POST routes there too)."""
    from hyv.service.api import routes_unsupported
    from hyv.service.api.app import create_app

    paths = {route.path for route in routes_unsupported.router.routes if isinstance(route, Route)}
    assert {p for p in paths if p.startswith("/v1/videos")} == {
        "/v1/videos/characters",
        "/v1/videos/characters/{character_id}",
    }
    assert not any(p.startswith(("/v1/models", "/v1/{")) for p in paths)
    schema = create_app(make_api_settings()).openapi()["paths"]  # what the server offers
    assert not any(p.startswith(("/v1/videos/characters", "/v1/chat", "/v1/images")) for p in schema)
