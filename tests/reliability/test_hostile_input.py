"""A corpus of hostile inputs against a live API (real uvicorn, real Redis; no worker needed):
each gets a clear 4xx in the error schema (or, for odd but valid images, is accepted and
converted), never a 5xx, and the service stays healthy afterwards (a valid request still works).

The server is shared by the whole module, so damage would accumulate across the attacks."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.reliability.conftest import (
    KEY_A,
    MAX_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    VALID,
    error_of,
    healthy,
    raw_request,
)
from tests.service.conftest_api import LiveServer

pytestmark = pytest.mark.timeout(60)


# --- the images ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR declares width x height, with a tiny (wrong) IDAT: a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb_png() -> bytes:
    """A real bomb: 20000x20000 grey pixels (400 Mpx, 1.2 GB as RGB) that deflate to ~400 KB."""
    width = height = 20000
    row = b"\x00" + b"\x00" * width  # filter byte + one 8-bit grey sample per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb_png(size: int = 32) -> bytes:
    return encode(Image.new("RGB", (size, size), (200, 30, 30)), "PNG")


def rgb_jpeg(size: int = 64) -> bytes:
    return encode(Image.new("RGB", (size, size), (30, 200, 30)), "JPEG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (48, 48), (10, 200, 30, 0)), "JPEG")


def png_16bit() -> bytes:
    return encode(Image.new("I;16", (40, 40), 40000), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(5)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


# name -> (bytes, accepted): "accepted" images are odd but valid; the API converts them to RGB.
IMAGES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "decompression_bomb_declared_100000x100000": (lambda: png_with_header(100_000, 100_000), False),
    "decompression_bomb_real_20000x20000": (decompression_bomb_png, False),
    "truncated_png": (lambda: rgb_png(64)[: len(rgb_png(64)) // 2], False),
    "truncated_jpeg": (lambda: rgb_jpeg()[: len(rgb_jpeg()) // 2], False),
    "png_0x0": (lambda: png_with_header(0, 0), False),
    "png_1x0": (lambda: png_with_header(1, 0), False),
    "png_signature_only": (lambda: b"\x89PNG\r\n\x1a\n", False),
    "one_byte": (lambda: b"\x00", False),
    "not_an_image_text": (lambda: b"#!/bin/sh\nrm -rf /\n", False),
    "html_polyglot": (lambda: b"<html><script>alert(1)</script></html>", False),
    "cmyk_jpeg": (cmyk_jpeg, True),
    "png_16bit": (png_16bit, True),
    "animated_gif": (animated_gif, True),
}


def _check(response: httpx.Response, accepted: bool) -> None:
    assert response.status_code < 500, response.text
    if accepted:
        assert response.status_code == 201, response.text
    else:
        assert 400 <= response.status_code < 500, response.text
        error = error_of(response)
        assert error["param"] in ("input_reference", None), error


@pytest.mark.parametrize("name", list(IMAGES))
def test_bad_image_multipart(client: httpx.Client, name: str) -> None:
    make, accepted = IMAGES[name]
    fields = {k: str(v) for k, v in VALID.items()}
    response = client.post(
        "/v1/videos", data=fields, files={"input_reference": ("x.png", make(), "image/png")}
    )
    _check(response, accepted)
    healthy(client)


@pytest.mark.parametrize("name", list(IMAGES))
def test_bad_image_json_data_url(client: httpx.Client, name: str) -> None:
    make, accepted = IMAGES[name]
    data_url = "data:image/png;base64," + base64.b64encode(make()).decode()
    response = client.post("/v1/videos", json={**VALID, "input_reference": data_url})
    _check(response, accepted)
    healthy(client)


def test_empty_image_file(client: httpx.Client) -> None:
    fields = {k: str(v) for k, v in VALID.items()}
    response = client.post("/v1/videos", data=fields, files={"input_reference": ("e.png", b"", "image/png")})
    assert response.status_code == 422 and error_of(response)["param"] == "input_reference"
    healthy(client)


@pytest.mark.parametrize(
    "data_url",
    [
        "data:image/png;base64,!!!not-base64!!!",
        "data:image/png;base64,",
        "http://169.254.169.254/latest/meta-data/",  # SSRF: remote URLs are never fetched
        "file:///etc/passwd",
        "data:text/html;base64,PGh0bWw+",
    ],
    ids=["invalid_base64", "empty_base64", "ssrf_metadata_url", "file_url", "html_data_url"],
)
def test_bad_data_url(client: httpx.Client, data_url: str) -> None:
    response = client.post("/v1/videos", json={**VALID, "input_reference": data_url})
    assert 400 <= response.status_code < 500, response.text
    error_of(response)
    healthy(client)


# --- prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_one_megabyte_prompt(client: httpx.Client, encoding: str) -> None:
    prompt = "a" * 2**20
    if encoding == "json":
        response = client.post("/v1/videos", json={**VALID, "prompt": prompt})
    else:
        fields = {**{k: str(v) for k, v in VALID.items()}, "prompt": prompt}
        response = client.post("/v1/videos", data=fields, files={"_": (None, "")})
    assert response.status_code in (413, 422), response.text
    error = error_of(response)
    assert error["param"] in ("prompt", None)
    assert len(response.content) < 10_000  # the prompt is not echoed back in full
    healthy(client)


ODD_PROMPTS = {
    "control_chars": "a red\x00circle\x07\x1b[31m moving\x08\x7f left",
    "crlf": "a red circle\r\nX-Injected: 1\r\n\r\nmoving left",
    "rtl_override": "a red circle \u202emoving left\u202c \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "zero_width_and_bom": "\ufeffa\u200b red\u200d circle\u2060",
    "backslash_escapes": "a red circle \\ud800 \\n \\x00 %00 %0d%0a",
    "nul_only": "\x00",
    "emoji_and_combining": "a re\u0301d circle \U0001f534\U0001f3ac" + "\u0301" * 200,
}


@pytest.mark.parametrize("name", list(ODD_PROMPTS))
def test_control_and_rtl_characters_in_the_prompt(client: httpx.Client, name: str) -> None:
    """Odd but valid text: accepted and stored verbatim (or refused with a 422), never a 5xx."""
    prompt = ODD_PROMPTS[name]
    response = client.post("/v1/videos", json={**VALID, "prompt": prompt})
    assert response.status_code in (201, 422), response.text
    if response.status_code == 201:
        job_id = response.json()["id"]
        assert client.get(f"/v1/videos/{job_id}").json()["prompt"] == prompt
        listed = client.get("/v1/videos", params={"limit": 100})
        assert listed.status_code == 200
    else:
        error_of(response)
    healthy(client)


def test_only_whitespace_and_control_prompt(client: httpx.Client) -> None:
    response = client.post("/v1/videos", json={**VALID, "prompt": " \t\r\n "})
    assert response.status_code == 422 and error_of(response)["param"] == "prompt"
    healthy(client)


# --- numbers ------------------------------------------------------------------------------------

BAD_NUMBERS: list[tuple[str, Any]] = [
    ("steps", "NaN"),
    ("steps", -1),
    ("steps", 0),
    ("steps", 10**30),
    ("steps", 2.5),
    ("guidance", "NaN"),
    ("guidance", "Infinity"),
    ("guidance", "-Infinity"),
    ("guidance", -1e308),
    ("guidance", 1e308),
    ("seed", -1),
    ("seed", 2**64),
    ("seed", 1e300),
    ("seed", "NaN"),
    ("num_frames", -5),
    ("num_frames", 0),
    ("num_frames", 10**12),
    ("fps", 0),
    ("fps", -24),
    ("fps", 10**9),
    ("seconds", "NaN"),
    ("seconds", "inf"),
    ("seconds", "-4"),
    ("seconds", "1e309"),
    ("size", "0x0"),
    ("size", "-32x32"),
    ("size", "99999x99999"),
    ("size", "32x32x32"),
    ("size", "NaNxNaN"),
]


def _json_literal(value: Any) -> str:
    """NaN/Infinity as the bare literals Python's json emits (invalid JSON that parsers accept)."""
    if value in ("NaN", "Infinity", "-Infinity"):
        return value
    return json.dumps(value)


@pytest.mark.parametrize(("field", "value"), BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_bad_numbers_json(client: httpx.Client, field: str, value: Any) -> None:
    fields = dict(VALID)
    fields.pop("num_frames" if field == "seconds" else "", None)
    body = {k: v for k, v in fields.items() if k != field}
    raw = json.dumps(body)[:-1] + f', "{field}": {_json_literal(value)}}}'
    response = client.post("/v1/videos", content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = error_of(response)
    assert error["param"] in (field, None, "body"), error
    healthy(client)


@pytest.mark.parametrize(("field", "value"), BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_bad_numbers_multipart(client: httpx.Client, field: str, value: Any) -> None:
    fields = {k: str(v) for k, v in VALID.items() if k != field}
    if field == "seconds":
        fields.pop("num_frames")
    fields[field] = str(value)
    response = client.post("/v1/videos", data=fields, files={"_": (None, "")})
    assert 400 <= response.status_code < 500, response.text
    error_of(response)
    healthy(client)


# --- malformed bodies ---------------------------------------------------------------------------

MALFORMED_JSON = {
    "not_json": b"{prompt: 'x'",
    "array": b"[1, 2, 3]",
    "string": b'"a red circle"',
    "null": b"null",
    "deeply_nested": b"[" * 100_000 + b"]" * 100_000,
    "deeply_nested_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "invalid_utf8": b'{"prompt": "\xff\xfe\xfa"}',
    "lone_surrogate_prompt": b'{"prompt": "a \\ud800 b"}',
    "lone_surrogate_negative_prompt": b'{"prompt": "a", "negative_prompt": "\\udfff"}',
    "duplicate_keys": b'{"prompt": "a", "prompt": 5}',
    "huge_integer_literal": b'{"prompt": "a", "seed": ' + b"9" * 100_000 + b"}",
    "extra_fields": b'{"prompt": "a", "__proto__": {"admin": true}, "owner": "someone-else"}',
    "wrong_types": b'{"prompt": ["a"], "size": {"w": 1}, "num_frames": true}',
    "empty": b"",
}


def test_utf16_json_is_read_or_refused(client: httpx.Client) -> None:
    """RFC 8259 wants UTF-8; Python's json also detects UTF-16/32 from the bytes: either is fine."""
    body = '{"prompt": "a red circle", "num_frames": 5, "size": "32x32"}'.encode("utf-16")
    response = client.post("/v1/videos", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (201, 422), response.text
    if response.status_code == 422:
        error_of(response)
    healthy(client)


@pytest.mark.parametrize("name", list(MALFORMED_JSON))
def test_malformed_json_body(client: httpx.Client, name: str) -> None:
    response = client.post(
        "/v1/videos", content=MALFORMED_JSON[name], headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text[:500]
    error_of(response)
    healthy(client)


MALFORMED_MULTIPART = {
    "no_boundary": (
        "multipart/form-data",
        b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n--x--\r\n',
    ),
    "wrong_boundary": ("multipart/form-data; boundary=abc", b"--zzz\r\nnonsense\r\n--zzz--\r\n"),
    "unterminated": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na red',
    ),
    "garbage": ("multipart/form-data; boundary=x", bytes(range(256)) * 64),
    "no_disposition": (
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Type: text/plain\r\n\r\na\r\n--x--\r\n",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED_MULTIPART))
def test_malformed_multipart_body(client: httpx.Client, name: str) -> None:
    content_type, body = MALFORMED_MULTIPART[name]
    response = client.post("/v1/videos", content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500, response.text[:500]
    error_of(response)
    healthy(client)


def test_too_many_multipart_fields(client: httpx.Client) -> None:
    fields = {f"field{i}": "x" for i in range(200)}
    response = client.post("/v1/videos", data={**fields, "prompt": "a"}, files={"_": (None, "")})
    assert response.status_code == 422, response.text
    error_of(response)
    healthy(client)


def test_two_files_and_a_foreign_file_field(client: httpx.Client) -> None:
    png = rgb_png()
    fields = {k: str(v) for k, v in VALID.items()}
    two = client.post(
        "/v1/videos",
        data=fields,
        files=[
            ("input_reference", ("a.png", png, "image/png")),
            ("input_reference", ("b.png", png, "image/png")),
        ],
    )
    assert two.status_code == 422, two.text
    error_of(two)
    foreign = client.post("/v1/videos", data=fields, files={"../../etc/passwd": ("x", png, "image/png")})
    assert foreign.status_code == 422, foreign.text
    error_of(foreign)
    healthy(client)


# --- sizes --------------------------------------------------------------------------------------


def test_oversized_multipart_with_content_length_is_413(client: httpx.Client) -> None:
    fields = {k: str(v) for k, v in VALID.items()}
    blob = b"\x00" * (MAX_BODY_BYTES + 1024)
    response = client.post(
        "/v1/videos", data=fields, files={"input_reference": ("big.png", blob, "image/png")}
    )
    assert response.status_code == 413, response.text
    assert error_of(response)["code"] == "request_too_large"
    healthy(client)


def test_oversized_chunked_body_is_413(client: httpx.Client) -> None:
    def chunks() -> Any:
        for _ in range(MAX_BODY_BYTES // 65536 + 4):
            yield b"a" * 65536

    response = client.post("/v1/videos", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    error_of(response)
    healthy(client)


def test_upload_over_the_upload_limit_is_413(client: httpx.Client) -> None:
    fields = {k: str(v) for k, v in VALID.items()}
    blob = rgb_png() + b"\x00" * (MAX_UPLOAD_BYTES + 10)  # under the body limit, over the upload one
    response = client.post(
        "/v1/videos", data=fields, files={"input_reference": ("big.png", blob, "image/png")}
    )
    assert response.status_code == 413, response.text
    error = error_of(response)
    assert error["code"] == "upload_too_large" and error["param"] == "input_reference"
    data_url = "data:image/png;base64," + base64.b64encode(blob).decode()
    response = client.post("/v1/videos", json={**VALID, "input_reference": data_url})
    assert response.status_code == 413, response.text
    error_of(response)
    healthy(client)


def test_lying_content_length_smaller_than_body(hostile_server: LiveServer) -> None:
    """Content-Length says 10, the body is 3 MB: the server reads 10 bytes, never the rest as a
    second request (no request smuggling), and answers the 10 bytes with a 4xx."""
    body = b'{"prompt":' + b"a" * (3 * 2**20)
    response = raw_request(
        hostile_server,
        b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY_A.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
        + body,
    )
    assert response.startswith(b"HTTP/1.1 4"), response[:200]
    assert response.count(b"HTTP/1.1 ") <= 2  # the rest is garbage to h11, refused, not executed


# --- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "image/png",
        "application/octet-stream",
        "",
        "multipart/mixed; boundary=x",
    ],
)
def test_wrong_content_type_is_415(client: httpx.Client, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/videos", content=json.dumps(VALID).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert error_of(response)["code"] == "unsupported_media_type"
    healthy(client)
