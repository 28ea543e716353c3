"""Hostile requests rather than bodies, against a live API (real uvicorn, real Redis): video ids with
`../`, NUL and CR/LF on every route, raw traversal paths, header injection, odd Idempotency-Keys,
Range / If-None-Match / Accept values and query parameters. Each gets a clear 4xx in the error
schema (or is harmless), never a 5xx, and the service stays healthy afterwards.

The server is shared by the whole module, so damage would accumulate across the attacks."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.reliability.conftest import KEY_A, VALID, error_of, healthy, raw_request
from tests.service.conftest_api import LiveServer

# --- ids and paths ------------------------------------------------------------------------------

BAD_IDS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "video_..%2F..%2Fetc%2Fpasswd",
    "video_%2E%2E%2F%2E%2E%2Fredis%2Fdump.rdb",
    "%00",
    "video_%00",
    "video_abc%00.mp4",
    "video_" + "a" * 5000,
    "video_*",
    "video_%0d%0aX-Injected:%201",
    "%E2%80%AEvideo_abc",
    "video_abc%20OR%201=1",
]


@pytest.mark.parametrize("video_id", BAD_IDS)
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("GET", "/content"), ("GET", "/events"), ("DELETE", "")]
)
def test_hostile_video_ids_are_404(client: httpx.Client, video_id: str, method: str, suffix: str) -> None:
    response = client.request(method, f"/v1/videos/{video_id}{suffix}")
    assert response.status_code == 404, response.text
    error_of(response)
    assert "x-injected" not in response.headers


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v1/videos/../../../../etc/passwd",
        b"/v1/videos/../../openapi.json/../v1/videos",
        b"/v1/videos/video_\x00abc",
        b"/v1/videos/..%00/content",
        b"/web/../../../../etc/passwd",
        b"/web/..%2F..%2F..%2Fservice%2Fsettings.py",
        b"/web/%2e%2e/%2e%2e/pyproject.toml",
    ],
)
def test_raw_traversal_paths_never_leak_files(hostile_server: LiveServer, raw_path: bytes) -> None:
    """Sent byte for byte (httpx would normalize dot segments): a 4xx, never a file's contents."""
    response = raw_request(
        hostile_server,
        b"GET " + raw_path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY_A.encode() + b"\r\n\r\n",
    )
    status = int(response.split(b" ", 2)[1])
    assert 400 <= status < 500, response[:300]
    assert b"root:" not in response and b"[project]" not in response and b"api_keys" not in response


# --- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Idempotency-Key: abc\r\nX-Injected: 1",
        b"Idempotency-Key: abc\nX-Injected: 1",
        b"Idempotency-Key: abc\rX-Injected: 1",
        b"Idempotency-Key: abc\x00def",
        b"Authorization: Bearer " + KEY_A.encode() + b"\r\nX-Injected: 1",
        b"Idempotency-Key:\r\n X-Injected: folded",
    ],
    ids=["crlf", "lf", "cr", "nul", "crlf_after_key", "obs_fold"],
)
def test_header_injection_is_refused_or_harmless(
    hostile_server: LiveServer, client: httpx.Client, header: bytes
) -> None:
    body = json.dumps(VALID).encode()
    response = raw_request(
        hostile_server,
        b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY_A.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
    )
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    status = int(response.split(b" ", 2)[1])
    assert status < 500, response[:300]
    assert b"\r\nx-injected" not in head  # never reflected as a response header
    healthy(client)


@pytest.mark.parametrize(
    "key",
    [b"", b"k" * 256, b"k" * 60_000, "caf\u00e9".encode("latin-1"), b"\xff\xfe", b"\t", b" spaced key "],
    ids=["empty", "256_chars", "60k_chars", "latin1", "high_bytes", "tab", "spaces"],
)
def test_odd_idempotency_keys(hostile_server: LiveServer, client: httpx.Client, key: bytes) -> None:
    """Sent raw (httpx refuses some of these): a 201 or a clear 4xx, never a 5xx."""
    body = json.dumps(VALID).encode()
    response = raw_request(
        hostile_server,
        b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY_A.encode()
        + b"\r\nContent-Type: application/json\r\nIdempotency-Key: "
        + key
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
    )
    status = int(response.split(b" ", 2)[1])
    assert status in (201, 400, 413, 422, 431), response[:300]
    if status in (413, 422):
        error = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["param"] in ("Idempotency-Key", None), error
    healthy(client)


def test_idempotency_key_is_not_reflected_into_headers(client: httpx.Client) -> None:
    key = "k%0d%0aX-Injected:%201"
    first = client.post("/v1/videos", json=VALID, headers={"Idempotency-Key": key})
    second = client.post("/v1/videos", json={**VALID, "prompt": "other"}, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and second.status_code == 409
    assert "x-injected" not in second.headers and "x-injected" not in first.headers
    error_of(second)
    healthy(client)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Range", "bytes=999999999999999999999-"),
        ("Range", "bytes=-0"),
        ("Range", "nonsense"),
        ("If-None-Match", '"' + "a" * 5000 + '"'),
        ("Accept", "../../etc/passwd"),
    ],
)
def test_odd_request_headers_on_reads(client: httpx.Client, name: str, value: str) -> None:
    job_id = client.post("/v1/videos", json=VALID).json()["id"]
    for path in (f"/v1/videos/{job_id}", "/v1/videos", "/v1/models"):
        response = client.get(path, headers={name: value})
        assert response.status_code < 500, response.text
    healthy(client)


def test_query_parameters_are_validated(client: httpx.Client) -> None:
    for params in (
        {"limit": "-1"},
        {"limit": "NaN"},
        {"limit": "1e9"},
        {"order": "sideways"},
        {"after": "../../etc"},
        {"after": "video_\x00"},
    ):
        response = client.get("/v1/videos", params=params)
        assert 400 <= response.status_code < 500, (params, response.text)
        error_of(response)
    for raw_query in ("after=%ff%fe", "limit=%00", "after=%ed%a0%80", "limit=1&limit=999"):
        response = client.get(f"/v1/videos?{raw_query}")
        assert 400 <= response.status_code < 500 or response.status_code == 200, (raw_query, response.text)
        if response.status_code != 200:
            error_of(response)
    job_id = client.post("/v1/videos", json=VALID).json()["id"]
    response = client.get(f"/v1/videos/{job_id}/content", params={"variant": "../../etc/passwd"})
    assert response.status_code == 422, response.text
    error_of(response)
    healthy(client)
