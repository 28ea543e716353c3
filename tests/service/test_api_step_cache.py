"""The `cache` option through the API: bad values are 422 naming them; a real worker runs the
requested cache and the finished video reports the block-stack evaluations computed and skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.service.conftest_api import KEY_A, auth
from tests.service.test_api import error_of
from tests.service.test_api_e2e import finished, wait_for

PROMPT = "a red circle moving right"


@pytest.mark.parametrize(
    ("cache", "fragment"),
    [
        ("fast", "'fast'"),
        ({"mode": "teacache", "threshold": -0.5}, "greater than 0"),
        ({"mode": "first_block", "threshold": "high"}, "'high'"),
        ({"mode": "off", "threshold": 0.1}, "not 'off'"),
        ({"mode": "teacache", "speed": 2}, "speed"),
    ],
)
def test_bad_cache_values_are_422_naming_them(api: httpx.Client, cache: Any, fragment: str) -> None:
    response = api.post("/v1/videos", json={"prompt": PROMPT, "cache": cache})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["param"].startswith("cache"), error
    assert fragment in error["message"], error


@pytest.fixture
def live(service_settings: Any, worker: Any, serve_app: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    """The API on the shared worker's Redis and data dir."""
    server = serve_app(service_settings.model_copy(update={"api_keys": [KEY_A]}))
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        yield client


@pytest.mark.timeout(300)
def test_the_worker_runs_the_cache_and_reports_skips(live: httpx.Client) -> None:
    body = {"prompt": PROMPT, "size": "32x32", "num_frames": 5, "steps": 8, "seed": 1}
    # A threshold no change reaches: only the first and last of the 8 steps run the block stack.
    cached = live.post("/v1/videos", json={**body, "cache": {"mode": "teacache", "threshold": 10}})
    form = live.post("/v1/videos", data={**body, "cache": "first_block"}, files={"_": (None, "")})
    plain = live.post("/v1/videos", json=body)
    # The OpenAI SDK's multipart flattening of the object (`extra_body={"cache": {...}}`).
    flattened = {**body, "cache[mode]": "teacache", "cache[threshold]": "10"}
    sdk_form = live.post("/v1/videos", data=flattened, files={"_": (None, "")})
    for response in (cached, form, plain, sdk_form):
        assert response.status_code == 201, response.text
    for job in (cached, sdk_form):
        video = wait_for(live, job.json()["id"], finished)
        assert video["status"] == "completed", video
        assert video["step_cache"] == {"mode": "teacache", "threshold": 10.0, "computed": 2, "skipped": 6}
    video = wait_for(live, form.json()["id"], finished)
    assert video["status"] == "completed", video
    stats = video["step_cache"]
    assert (stats["mode"], stats["threshold"], stats["computed"] + stats["skipped"]) == (
        "first_block",
        0.1,
        8,
    )
    video = wait_for(live, plain.json()["id"], finished)  # no cache named, no server default: off
    assert video["step_cache"] == {"mode": "off", "threshold": None, "computed": 8, "skipped": 0}


def test_the_server_default_comes_from_the_settings(tmp_path: Any) -> None:
    from pydantic import ValidationError

    from hyv.engine.step_cache import StepCacheConfig
    from hyv.service.model_loading import pipeline_options
    from hyv.service.settings import Settings

    settings = Settings(data_dir=tmp_path, cache="first_block", cache_threshold=0.2)
    assert settings.default_cache == StepCacheConfig(mode="first_block", threshold=0.2)
    assert pipeline_options(settings).default_cache == settings.default_cache
    assert Settings(data_dir=tmp_path).default_cache == StepCacheConfig()
    with pytest.raises(ValidationError, match="fast"):
        Settings(data_dir=tmp_path, cache="fast")
    with pytest.raises(ValidationError, match="not 'off'"):
        Settings(data_dir=tmp_path, cache_threshold=0.1)
