"""LoRA adapters through the real service: the API (live uvicorn), Redis and a Celery worker whose
LoRA folder holds synthetic adapters; JSON requests and the OpenAI SDK's multipart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hyv.engine.lora_formats import LoraTargets
from hyv.engine.request import MAX_LORAS
from hyv.engine.video_io import read_mp4
from hyv.models.dit_loading import load_dit
from tests.service.conftest_api import KEY_A, auth

openai = pytest.importorskip("openai", reason="the openai package is not installed (pip install openai)")

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the SDK's Videos API
]

REQUEST = {"prompt": "a red circle moving right", "size": "32x32", "num_frames": 5, "steps": 2, "seed": 5}


def write_adapter(
    path: Path, targets: LoraTargets, seed: int, layers: tuple[str, ...], nan: bool = False
) -> None:
    """A native-format adapter large enough to change the tiny model's video visibly."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module in layers:
        rows, cols = targets.shapes[module]
        tensors[f"{module}.lora_A.weight"] = torch.randn(4, cols, generator=generator) / cols**0.5
        tensors[f"{module}.lora_B.weight"] = torch.randn(rows, 4, generator=generator)
    if nan:
        tensors[f"{layers[0]}.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, str(path))


@pytest.fixture
def lora_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    targets = LoraTargets.of(load_dit(tiny_bundle / "dit"))
    folder = tmp_path / "loras"
    folder.mkdir()
    write_adapter(
        folder / "wobble.safetensors", targets, 1, ("double_blocks.0.img_attn_qkv", "final_layer.linear")
    )
    write_adapter(folder / "tint.safetensors", targets, 2, ("final_layer.linear",))
    write_adapter(folder / "broken.safetensors", targets, 3, ("final_layer.linear",), nan=True)
    (folder / "notes.txt").write_text("not an adapter: not listed")
    write_adapter(folder / "cut.safetensors", targets, 4, ("final_layer.linear",))
    data = (folder / "cut.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    rank_mismatch = {
        "final_layer.linear.lora_A.weight": torch.ones(4, 8),
        "final_layer.linear.lora_B.weight": torch.ones(8, 3),
    }
    save_file(rank_mismatch, str(folder / "skewed.safetensors"))
    return folder


@pytest.fixture
def service(cluster: Callable[..., Any], serve_app: Callable[[Any], Any], lora_dir: Path) -> Any:
    made = cluster(workers=1, lora_dir=lora_dir, lora_cache_size=2)
    return serve_app(made.settings.model_copy(update={"api_keys": [KEY_A]}))


def finished(client: httpx.Client, video_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed"):
            return dict(video)
        time.sleep(0.1)
    raise AssertionError(f"video {video_id} did not finish within {timeout_s} s")


def render(client: httpx.Client, tmp_path: Path, **extra: Any) -> np.ndarray:
    created = client.post("/v1/videos", json={**REQUEST, **extra})
    assert created.status_code == 201, created.text
    video = finished(client, created.json()["id"])
    assert video["status"] == "completed", video
    assert video["loras"] == [
        {"name": n["name"], "scale": n.get("scale", 1.0)} for n in extra.get("loras", [])
    ]
    path = tmp_path / f"{video['id']}.mp4"
    path.write_bytes(client.get(f"/v1/videos/{video['id']}/content").content)
    return read_mp4(path)


def test_loras_per_request_through_the_service(service: Any, tmp_path: Path) -> None:
    with httpx.Client(base_url=service.url, headers=auth(KEY_A), timeout=30) as client:
        models = client.get("/v1/models").json()["data"]
        assert models[0]["loras"] == ["broken", "cut", "skewed", "tint", "wobble"]

        base = render(client, tmp_path)
        wobble = render(client, tmp_path, loras=[{"name": "wobble"}])
        assert np.abs(wobble.astype(int) - base.astype(int)).mean() > 2  # visibly another video
        assert np.array_equal(render(client, tmp_path), base)  # no adapter after one: the base exactly
        assert np.array_equal(render(client, tmp_path, loras=[{"name": "wobble", "scale": 0.0}]), base)
        tint = render(client, tmp_path, loras=[{"name": "tint", "scale": 0.5}])
        assert not np.array_equal(tint, base)
        assert np.array_equal(render(client, tmp_path, loras=[{"name": "wobble"}]), wobble)  # as alone
        both = render(client, tmp_path, loras=[{"name": "wobble"}, {"name": "tint", "scale": 0.5}])
        assert not np.array_equal(both, wobble) and not np.array_equal(both, tint)

        # refused at create: 422 in the API's error schema, naming what is wrong
        unknown = client.post("/v1/videos", json={**REQUEST, "loras": [{"name": "nope"}]})
        assert unknown.status_code == 422
        error = unknown.json()["error"]
        assert error["param"] == "loras"
        assert (
            "nope" in error["message"] and "['broken', 'cut', 'skewed', 'tint', 'wobble']" in error["message"]
        )
        for bad, needle in (
            ([{"name": "wobble", "scale": "nan"}], "scale"),
            ([{"name": "../wobble"}], "name"),
            ([{"name": "wobble"}, {"name": "wobble"}], "more than once"),
            ([{"name": f"a{i}"} for i in range(MAX_LORAS + 1)], "loras"),
            ([{"name": "cut"}], "past the end of the file"),  # the header check at create
            ([{"name": "skewed"}], "rank mismatch, down [4, 8] has rank 4, up [8, 3] has 3"),
        ):
            response = client.post("/v1/videos", json={**REQUEST, "loras": bad})
            assert response.status_code == 422, (bad, response.text)
            assert needle in response.json()["error"]["message"], response.text

        # a bad file: the job fails before it runs, with the reason; the base model is untouched
        created = client.post("/v1/videos", json={**REQUEST, "loras": [{"name": "broken"}]})
        assert created.status_code == 201
        failed = finished(client, created.json()["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request"
        assert "final_layer.linear" in failed["error"]["message"] and "NaN" in failed["error"]["message"]
        assert failed["step"] in (0, None)
        assert np.array_equal(render(client, tmp_path), base)

    # The OpenAI SDK: extra_body's list arrives as multipart `loras[][name]` / `loras[][scale]`.
    with openai.OpenAI(base_url=f"{service.url}/v1", api_key=KEY_A, max_retries=0) as sdk:
        extra = {k: v for k, v in REQUEST.items() if k not in ("prompt", "size")}
        video = sdk.videos.create_and_poll(
            prompt=REQUEST["prompt"],
            size="32x32",  # type: ignore[arg-type]
            extra_body={**extra, "loras": [{"name": "wobble", "scale": 1.0}, {"name": "tint", "scale": 0.5}]},
            poll_interval_ms=100,
        )
        assert video.status == "completed", video
        target = tmp_path / "sdk.mp4"
        sdk.videos.download_content(video.id).write_to_file(target)
        assert np.array_equal(read_mp4(target), both)
        with pytest.raises(openai.UnprocessableEntityError, match="nope"):
            sdk.videos.create(prompt=REQUEST["prompt"], extra_body={"loras": [{"name": "nope"}]})
