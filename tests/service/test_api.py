"""The HTTP API against a real Redis and a real uvicorn server, without a worker (jobs stay queued):
validation, auth, key isolation, idempotency, limits (401/404/409/413/422/429), listing, cancel,
models, health, metrics and the OpenAPI document."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.service.conftest_api import KEY_A, KEY_B, auth

pytestmark = pytest.mark.timeout(120)

TINY = {"prompt": "a red circle moving left", "size": "32x32", "num_frames": "5"}


def png_bytes(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def create(client: httpx.Client, fields: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    """A multipart submission, as the OpenAI SDK sends it."""
    files = kwargs.pop("files", {"_": (None, "")})  # force multipart even without a file
    data = {k: str(v) for k, v in (fields or TINY).items()}
    return client.post("/v1/videos", data=data, files=files, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "param", "type"}, body
    return dict(body["error"])


# --- create and retrieve ------------------------------------------------------------------------


def test_create_multipart_returns_the_queued_video_with_location(api: httpx.Client) -> None:
    before = int(time.time())
    response = create(api)
    assert response.status_code == 201, response.text
    video = response.json()
    assert response.headers["location"] == f"/v1/videos/{video['id']}"
    assert video["id"].startswith("video_") and len(video["id"]) == len("video_") + 24
    assert video["object"] == "video"
    assert video["model"] == "hyv-tiny"
    assert video["status"] == "queued"
    assert video["progress"] == 0
    assert before <= video["created_at"] <= int(time.time())
    assert video["size"] == "32x32"
    assert video["num_frames"] == 5 and video["fps"] == 8
    assert video["seconds"] == "0.5"  # (5 - 1) / 8
    assert video["steps"] == 2  # the tiny model's default
    assert isinstance(video["seed"], int)  # resolved now, reported back
    assert video["queue_position"] == 1
    assert video["error"] is None and video["completed_at"] is None

    again = api.get(f"/v1/videos/{video['id']}")
    assert again.status_code == 200
    assert again.json()["id"] == video["id"] and again.json()["seed"] == video["seed"]
    assert again.headers["openai-poll-after-ms"] == "250"


def test_create_json_with_our_fields(api: httpx.Client) -> None:
    body = {
        "prompt": "a blue square",
        "size": "64x48",
        "num_frames": 9,
        "fps": 12,
        "steps": 3,
        "guidance": 4.5,
        "seed": 1234,
        "negative_prompt": "a green triangle",
    }
    response = api.post("/v1/videos", json=body)
    assert response.status_code == 201, response.text
    video = response.json()
    assert (video["size"], video["num_frames"], video["fps"], video["steps"], video["seed"]) == (
        "64x48",
        9,
        12,
        3,
        1234,
    )
    assert video["seconds"] == f"{8 / 12:g}"


@pytest.mark.parametrize(("seconds", "frames"), [("0.5", 5), ("1", 9), ("0.1", 5)])
def test_seconds_become_4n_plus_1_frames(api: httpx.Client, seconds: str, frames: int) -> None:
    response = create(api, {"prompt": "a red circle", "seconds": seconds})
    assert response.status_code == 201, response.text
    assert response.json()["num_frames"] == frames


def test_num_frames_wins_over_seconds(api: httpx.Client) -> None:
    response = create(api, {"prompt": "a red circle", "seconds": "1", "num_frames": "5"})
    assert response.json()["num_frames"] == 5


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"prompt": "a red circle", "size": "33x32"}, "size", "got 33"),
        ({"prompt": "a red circle", "size": "128x32"}, "size", "[16, 64], got 128"),
        ({"prompt": "a red circle", "size": "big"}, "size", "'big'"),
        ({"prompt": "a red circle", "num_frames": "6"}, "num_frames", "4n+1 in [1, 9], got 6"),
        ({"prompt": "a red circle", "num_frames": "0"}, "num_frames", "got 0"),
        ({"prompt": "a red circle", "seconds": "0"}, "seconds", "more than 0 and less than 3600, got '0'"),
        ({"prompt": "a red circle", "seconds": "soon"}, "seconds", "'soon'"),
        ({"prompt": "a red circle", "steps": "101"}, "steps", "[1, 100], got 101"),
        ({"prompt": "a red circle", "fps": "0"}, "fps", "got 0"),
        ({"prompt": "a red circle", "guidance": "lots"}, "guidance", "'lots'"),
        ({"prompt": "a red circle", "seed": "-1"}, "seed", "got -1"),
        ({"prompt": "   "}, "prompt", "whitespace"),
        ({"size": "32x32"}, "prompt", "prompt is required"),
        ({"prompt": "a red circle", "model": "sora-2"}, "model", "'sora-2' is not served here"),
        ({"prompt": "a red circle", "colour": "red"}, "colour", "unknown field 'colour'"),
    ],
)
def test_invalid_values_are_422_naming_the_field(
    api: httpx.Client, fields: dict[str, str], param: str, fragment: str
) -> None:
    response = create(api, fields)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["code"] == "invalid_value"
    assert fragment in error["message"]


def test_json_body_errors(api: httpx.Client) -> None:
    bad = api.post("/v1/videos", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid_json"
    wrong = api.post("/v1/videos", content=b"prompt=x", headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415 and "text/plain" in error_of(wrong)["message"]
    remote = api.post(
        "/v1/videos", json={"prompt": "a red circle", "input_reference": "https://example.com/a.png"}
    )
    assert remote.status_code == 422 and error_of(remote)["param"] == "input_reference"


def test_an_image_for_a_text_to_video_model_is_422(api: httpx.Client) -> None:
    response = create(api, files={"input_reference": ("a.png", png_bytes(), "image/png")})
    assert response.status_code == 422
    error = error_of(response)
    assert error["param"] == "input_reference" and "text-to-video only" in error["message"]


@pytest.fixture
def i2v_api(
    make_api_settings: Callable[..., Any],
    serve_app: Callable[[Any], Any],
    tiny_bundle_dir: Any,
    tmp_path: Any,
) -> Iterator[tuple[httpx.Client, Any]]:
    """The API validating for an image-capable model: the tiny bundle's config with image conditioning
    (only bundle.json and dit/config.json are read by the API)."""
    import shutil

    bundle = tmp_path / "hyv-tiny-i2v"
    shutil.copytree(tiny_bundle_dir, bundle)
    config_path = bundle / "dit" / "config.json"
    config = json.loads(config_path.read_text())
    config["image_condition"] = "latent_concat"
    config_path.write_text(json.dumps(config))
    settings = make_api_settings(weights=bundle)
    server = serve_app(settings)
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client, settings


def test_image_to_video_upload_and_data_url(i2v_api: tuple[httpx.Client, Any]) -> None:
    from hyv.service.storage import LocalStorage

    client, settings = i2v_api
    image = png_bytes(40, 20)
    upload = create(client, files={"input_reference": ("a.png", image, "image/png")})
    assert upload.status_code == 201, upload.text
    storage = LocalStorage(settings.data_dir)
    assert storage.load_input_image(upload.json()["id"]) == image

    import base64

    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    as_json = client.post(
        "/v1/videos", json={"prompt": "a red circle", "input_reference": {"image_url": data_url}}
    )
    assert as_json.status_code == 201, as_json.text
    assert storage.load_input_image(as_json.json()["id"]) == image
    # The OpenAI SDK's encoding of the reference object in multipart.
    nested = create(client, {"prompt": "a red circle", "input_reference[image_url]": data_url})
    assert nested.status_code == 201, nested.text

    broken = create(client, files={"input_reference": ("a.png", b"not an image", "image/png")})
    assert broken.status_code == 422 and "could not be read" in error_of(broken)["message"]


# --- auth and isolation -------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_never_echoed(api: httpx.Client) -> None:
    base = str(api.base_url)
    missing = httpx.get(f"{base}/v1/videos")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)["code"] == "invalid_api_key"
    wrong = httpx.post(f"{base}/v1/videos", json={"prompt": "a red circle"}, headers=auth("sk-guess-123"))
    assert wrong.status_code == 401 and "sk-guess-123" not in wrong.text
    basic = httpx.get(f"{base}/v1/models", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and "Bearer" in error_of(basic)["message"]
    assert httpx.get(f"{base}/healthz").status_code == 200  # health needs no key


def test_another_keys_job_is_404_everywhere(api: httpx.Client) -> None:
    video = create(api).json()
    other = httpx.Client(base_url=api.base_url, headers=auth(KEY_B), timeout=10)
    for method, path in [
        ("GET", f"/v1/videos/{video['id']}"),
        ("GET", f"/v1/videos/{video['id']}/content"),
        ("GET", f"/v1/videos/{video['id']}/events"),
        ("DELETE", f"/v1/videos/{video['id']}"),
    ]:
        response = other.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["code"] == "not_found"
    assert other.get("/v1/videos").json()["data"] == []
    assert api.get(f"/v1/videos/{video['id']}").json()["status"] == "queued"  # B's DELETE did nothing


def test_unknown_ids_are_404(api: httpx.Client) -> None:
    for video_id in ("video_" + "0" * 24, "video_nothex", "../../etc/passwd"):
        response = api.get(f"/v1/videos/{video_id}")
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"
    no_route = api.get("/v1/nothing")
    assert no_route.status_code == 404 and "GET /v1/nothing" in error_of(no_route)["message"]
    wrong_method = api.put("/v1/videos")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["code"] == "method_not_allowed"


def test_without_keys_everyone_is_anonymous(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    server = serve_app(make_api_settings(api_keys=[]))
    response = httpx.post(f"{server.url}/v1/videos", json={"prompt": "a red circle"})
    assert response.status_code == 201
    assert len(httpx.get(f"{server.url}/v1/videos").json()["data"]) == 1


def test_no_keys_means_loopback_only() -> None:
    from hyv.service.api.auth import check_bind

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind(host, [])
    with pytest.raises(ValueError, match=r"refusing to bind .0\.0\.0\.0. without API keys"):
        check_bind("0.0.0.0", [])
    check_bind("0.0.0.0", ["a-key"])


# --- idempotency --------------------------------------------------------------------------------


def test_idempotency_key_replays_the_same_job(api: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = create(api, headers=headers)
    assert first.status_code == 201
    # Same fields, another multipart boundary: still the same request.
    second = create(api, headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    # The same fields as JSON are the same request too.
    as_json = api.post(
        "/v1/videos", json={"prompt": TINY["prompt"], "size": "32x32", "num_frames": 5}, headers=headers
    )
    assert as_json.json()["id"] == first.json()["id"]
    assert len(api.get("/v1/videos").json()["data"]) == 1

    other_body = create(api, {**TINY, "prompt": "a blue square"}, headers=headers)
    assert other_body.status_code == 409
    error = error_of(other_body)
    assert error["code"] == "idempotency_key_reused" and first.json()["id"] in error["message"]

    # Keys are per API key: B's "order-17" is its own.
    other_key = create(api, headers={**headers, **auth(KEY_B)})
    assert other_key.status_code == 201 and other_key.json()["id"] != first.json()["id"]


def test_concurrent_idempotent_submissions_make_one_job(api: httpx.Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def submit(_: int) -> str:
        with httpx.Client(base_url=api.base_url, headers={**auth(KEY_A), "Idempotency-Key": "race"}) as c:
            response = create(c)
            assert response.status_code in (200, 201), response.text
            return str(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit, range(8)))
    assert len(ids) == 1
    assert len(api.get("/v1/videos").json()["data"]) == 1


# --- limits -------------------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    server = serve_app(make_api_settings(rate_limit_per_minute=3))
    client = httpx.Client(base_url=server.url, headers=auth(KEY_A))
    codes = [create(client).status_code for _ in range(3)]
    limited = create(client)
    if limited.status_code == 201:  # the clock minute turned between the requests: one more try
        codes, limited = [*codes, 201], create(client)
    assert codes[:3] == [201, 201, 201]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert error_of(limited)["code"] == "rate_limit_exceeded"
    assert "3 video submissions per minute" in error_of(limited)["message"]
    # Reads are not limited, and other keys have their own budget.
    assert all(client.get("/v1/videos").status_code == 200 for _ in range(10))
    assert create(client, headers=auth(KEY_B)).status_code == 201


def test_queued_job_cap_is_429(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    server = serve_app(make_api_settings(max_queued_jobs_per_key=2))
    client = httpx.Client(base_url=server.url, headers=auth(KEY_A))
    first, _ = create(client).json(), create(client)
    capped = create(client)
    assert capped.status_code == 429
    assert capped.headers["retry-after"] == "5"
    error = error_of(capped)
    assert error["code"] == "too_many_queued_jobs" and "already has 2 queued jobs" in error["message"]
    client.delete(f"/v1/videos/{first['id']}")  # cancelling one frees a slot
    assert create(client).status_code == 201


def test_body_and_upload_limits_are_413(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    server = serve_app(make_api_settings(max_body_bytes=4096, max_upload_bytes=1024))
    client = httpx.Client(base_url=server.url, headers=auth(KEY_A))
    big_body = create(client, files={"input_reference": ("a.png", b"\x89PNG" + b"0" * 8000, "image/png")})
    assert big_body.status_code == 413
    assert error_of(big_body)["code"] == "request_too_large" and "4096" in error_of(big_body)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as the body streams in
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    streamed = client.post("/v1/videos", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413

    big_upload = create(client, files={"input_reference": ("a.png", b"\x89PNG" + b"0" * 2000, "image/png")})
    assert big_upload.status_code == 413
    error = error_of(big_upload)
    assert error["code"] == "upload_too_large" and error["param"] == "input_reference"
    assert "1024" in error["message"]


# --- list and delete ----------------------------------------------------------------------------


def test_list_pages_with_after_limit_order(api: httpx.Client) -> None:
    ids = []
    for i in range(5):
        color = ("red", "green", "blue", "yellow", "cyan")[i]
        ids.append(create(api, {**TINY, "prompt": f"a {color} circle"}).json()["id"])
        time.sleep(0.002)  # distinct creation times
    page = api.get("/v1/videos", params={"limit": 2}).json()
    assert page["object"] == "list"
    assert [v["id"] for v in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])
    rest = api.get("/v1/videos", params={"limit": 10, "after": page["last_id"]}).json()
    assert [v["id"] for v in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    ascending = api.get("/v1/videos", params={"order": "asc", "limit": 3}).json()
    assert [v["id"] for v in ascending["data"]] == ids[:3]
    # Queue positions follow submission order.
    assert [v["queue_position"] for v in ascending["data"]] == [1, 2, 3]

    assert api.get("/v1/videos", params={"limit": 0}).status_code == 422
    assert error_of(api.get("/v1/videos", params={"limit": 101}))["param"] == "limit"
    assert error_of(api.get("/v1/videos", params={"order": "up"}))["param"] == "order"
    unknown = api.get("/v1/videos", params={"after": "video_" + "f" * 24})
    assert unknown.status_code == 422 and error_of(unknown)["param"] == "after"


def test_delete_cancels_a_queued_job_then_deletes_it(api: httpx.Client) -> None:
    first, second = create(api).json(), create(api).json()
    assert api.get(f"/v1/videos/{second['id']}").json()["queue_position"] == 2
    cancelled = api.delete(f"/v1/videos/{first['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json() == {
        "id": first["id"],
        "object": "video.deleted",
        "deleted": False,
        "status": "cancelled",
    }
    after = api.get(f"/v1/videos/{first['id']}").json()
    assert after["status"] == "cancelled" and after["completed_at"] is not None
    assert after["error"]["code"] == "cancelled"
    assert api.get(f"/v1/videos/{second['id']}").json()["queue_position"] == 1  # moved up
    content = api.get(f"/v1/videos/{first['id']}/content")
    assert content.status_code == 409 and error_of(content)["code"] == "video_not_available"

    deleted = api.delete(f"/v1/videos/{first['id']}")
    assert deleted.json()["deleted"] is True
    assert api.get(f"/v1/videos/{first['id']}").status_code == 404
    assert [v["id"] for v in api.get("/v1/videos").json()["data"]] == [second["id"]]


def test_content_variants_of_a_queued_job(api: httpx.Client) -> None:
    video = create(api).json()
    thumbnail = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "thumbnail"})
    assert thumbnail.status_code == 409 and error_of(thumbnail)["code"] == "video_not_ready"
    sprites = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "spritesheet"})
    assert sprites.status_code == 409 and error_of(sprites)["code"] == "video_not_ready"
    sprites_head = api.head(f"/v1/videos/{video['id']}/content", params={"variant": "spritesheet"})
    assert sprites_head.status_code == 409
    unknown = api.get(f"/v1/videos/{video['id']}/content", params={"variant": "gif"})
    assert unknown.status_code == 422 and error_of(unknown)["param"] == "variant"


# --- models, health, metrics, docs --------------------------------------------------------------


def test_models_lists_the_served_model_and_its_limits(api: httpx.Client) -> None:
    models = api.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    model = models["data"][0]
    assert model["id"] == "hyv-tiny" and model["object"] == "model"
    assert (model["max_width"], model["max_height"], model["max_frames"]) == (64, 64, 9)
    assert model["defaults"]["num_frames"] == 5 and model["defaults"]["steps"] == 2
    assert model["supports_image"] is False
    assert api.get("/v1/models/hyv-tiny").json()["id"] == "hyv-tiny"
    assert api.get("/v1/models/sora-2").status_code == 404


def test_health_and_readiness_without_a_worker(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    create(api)
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "no worker running"
    assert ready.json()["queue_depth"] == 1


def test_metrics_count_requests_by_route_template(api: httpx.Client) -> None:
    video = create(api).json()
    for _ in range(3):
        api.get(f"/v1/videos/{video['id']}")
    api.get("/v1/videos/video_" + "0" * 24)
    text = api.get("/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    get_ok = 'hyv_requests_total{code="200",method="GET",route="/v1/videos/{video_id}"}'
    get_missing = 'hyv_requests_total{code="404",method="GET",route="/v1/videos/{video_id}"}'
    assert samples[get_ok] >= 3 and samples[get_missing] >= 1
    assert samples['hyv_jobs_submitted_total{mode="t2v",model="hyv-tiny"}'] >= 1
    duration = 'hyv_request_duration_seconds_count{method="GET",route="/v1/videos/{video_id}"}'
    assert samples[duration] >= 4
    assert samples['hyv_queue_depth{queue="hyv.hyv-tiny"}'] == 1


def test_openapi_documents_both_encodings_and_errors(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    create_op = spec["paths"]["/v1/videos"]["post"]
    content = create_op["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert content["multipart/form-data"]["schema"]["properties"]["input_reference"]["format"] == "binary"
    assert "text_to_video" in content["application/json"]["examples"]
    assert "VideoCreate" in spec["components"]["schemas"]
    assert {"201", "409", "413", "422", "429"} <= set(create_op["responses"])
    assert create_op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorResponse"
    )
    for path in ("/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/v1/videos/{video_id}/events"):
        assert path in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer_auth"]["scheme"] == "bearer"
