"""What the served model can follow, over the real API (real Redis, a live uvicorn server, no worker):
prompts with words outside the built-in text encoder's vocabulary are a 422 naming the words (JSON
and multipart, prompt and negative_prompt), sizes and seconds are mapped onto the model's buckets
and a num_frames outside them is a 422 naming the ones it has, /v1/models lists the vocabulary,
the grammar, the sizes and the frame counts; a model with the LLaMA/CLIP text encoders takes any
text; the bundled hyv-small as shipped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, read_bundle_spec
from hyv.models.text_encoder_builtin import (
    CAPTION_BACKGROUNDS,
    CAPTION_COLORS,
    CAPTION_MOTIONS,
    CAPTION_SHAPES,
    default_caption_vocabulary,
)
from tests.fixtures.releases import release_folder
from tests.service.conftest_api import KEY_A, auth

pytestmark = pytest.mark.timeout(120)

GOOD = "a red circle moving left on a black background"
HINT = "; see GET /v1/models/hyv-tiny for the vocabulary and grammar"


def _client(serve_app: Callable[[Any], Any], settings: Any) -> httpx.Client:
    server = serve_app(settings)
    return httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30)


@pytest.fixture
def api(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any], bucketed_bundle_dir: Path
) -> Iterator[httpx.Client]:
    with _client(serve_app, make_api_settings(weights=bucketed_bundle_dir)) as client:
        yield client


def multipart(client: httpx.Client, fields: dict[str, Any]) -> httpx.Response:
    """As the OpenAI SDK sends it (a dummy part forces multipart without a file)."""
    return client.post("/v1/videos", data={k: str(v) for k, v in fields.items()}, files={"_": (None, "")})


def as_json(client: httpx.Client, fields: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/videos", json=fields)


SENDERS = {"json": as_json, "multipart": multipart}


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param", "type"}, body
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


# --- the vocabulary -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", SENDERS)
@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("a cat playing piano", "'cat', 'playing', 'piano'"),
        ("an orange circle moving left on a black background", "'orange'"),
        ("一只猫在弹钢琴", "'一只猫在弹钢琴'"),  # another script: one whole word, not dropped
        ("一只 red 猫", "'一只', '猫'"),
        ("a red café-circle, moving left!", "'café'"),  # punctuation separates, é stays in its word
        ("a red circle 🐱 moving left", "'🐱'"),
        ("The Cat, the CAT and the cat.", "'cat'"),  # lowercased, named once
    ],
)
def test_off_vocabulary_prompts_are_422_naming_the_words(
    api: httpx.Client, encoding: str, prompt: str, named: str
) -> None:
    error = error_of(SENDERS[encoding](api, {"prompt": prompt, "size": "32x32"}))
    assert error["param"] == "prompt"
    assert error["code"] == "prompt_outside_vocabulary"
    assert error["message"] == f"prompt: words outside this model's vocabulary: {named}{HINT}"
    assert api.get("/v1/videos").json()["data"] == []  # nothing was queued


@pytest.mark.parametrize("encoding", SENDERS)
@pytest.mark.parametrize(
    "prompt",
    [
        GOOD,
        "A RED Circle, moving-left on a black background!",  # read as the tokenizer reads it
        "  a white triangle   growing on a gray background  ",
        "a blue square",  # in the vocabulary, if not the whole caption
    ],
)
def test_in_vocabulary_prompts_are_queued(api: httpx.Client, encoding: str, prompt: str) -> None:
    response = SENDERS[encoding](api, {"prompt": prompt})
    assert response.status_code == 201, response.text
    assert response.json()["prompt"] == prompt


def test_a_prompt_without_any_word_is_422(api: httpx.Client) -> None:
    error = error_of(as_json(api, {"prompt": "?!... --"}))
    assert error["param"] == "prompt" and error["code"] == "prompt_outside_vocabulary"
    assert error["message"].startswith("prompt: no words in '?!... --'")


@pytest.mark.parametrize("encoding", SENDERS)
def test_negative_prompt_is_checked_too(api: httpx.Client, encoding: str) -> None:
    send = SENDERS[encoding]
    error = error_of(send(api, {"prompt": GOOD, "negative_prompt": "blurry, low quality"}))
    assert error["param"] == "negative_prompt"
    assert error["message"] == (
        f"negative_prompt: words outside this model's vocabulary: 'blurry', 'low', 'quality'{HINT}"
    )
    assert send(api, {"prompt": GOOD, "negative_prompt": "a white square"}).status_code == 201
    assert send(api, {"prompt": GOOD, "negative_prompt": ""}).status_code == 201  # empty: none
    assert send(api, {"prompt": GOOD, "negative_prompt": "..."}).status_code == 201  # no words: none


def test_the_prompt_is_checked_before_the_size(api: httpx.Client) -> None:
    error = error_of(as_json(api, {"prompt": "a cat", "size": "64x64"}))
    assert error["param"] == "prompt" and "'cat'" in error["message"]


# --- sizes and lengths ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", SENDERS)
@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"size": "32x96"},
            "size",
            "size 32x96: its aspect ratio (0.333) is not within a factor of 2 of any of this model's "
            "sizes: 32x32, 48x32",
        ),
        ({"num_frames": 1}, "num_frames", "num_frames 1 is not one of this model's lengths: 5, 9 frames"),
        ({"num_frames": 7}, "num_frames", "num_frames 7 is not one of this model's lengths: 5, 9 frames"),
        ({"num_frames": 17}, "num_frames", "num_frames 17 is not one of this model's lengths: 5, 9 frames"),
    ],
)
def test_sizes_and_lengths_outside_the_buckets_are_422_naming_them(
    api: httpx.Client, encoding: str, fields: dict[str, Any], param: str, message: str
) -> None:
    error = error_of(SENDERS[encoding](api, {"prompt": GOOD, **fields}))
    assert error["param"] == param
    assert error["message"] == message


@pytest.mark.parametrize("encoding", SENDERS)
@pytest.mark.parametrize(
    ("fields", "size", "frames"),
    [
        ({}, "32x32", 5),
        ({"size": "48x32", "num_frames": 9}, "48x32", 9),
        ({"size": "48x32", "seconds": "1"}, "48x32", 9),  # OpenAI's seconds: 1 s at 8 fps is 9 frames
        ({"seconds": "0.5"}, "32x32", 5),
        # Mapped onto the buckets: the nearest aspect ratio, the nearest duration.
        ({"size": "32x48"}, "32x32", 5),
        ({"size": "48x48"}, "32x32", 5),
        ({"size": "64x32"}, "48x32", 5),
        ({"seconds": "2"}, "32x32", 9),
        ({"seconds": "1", "fps": 12}, "32x32", 9),
    ],
)
def test_every_bucket_is_accepted(
    api: httpx.Client, encoding: str, fields: dict[str, Any], size: str, frames: int
) -> None:
    response = SENDERS[encoding](api, {"prompt": GOOD, **fields})
    assert response.status_code == 201, response.text
    assert (response.json()["size"], response.json()["num_frames"]) == (size, frames)


# --- /v1/models -----------------------------------------------------------------------------------


def test_models_list_the_vocabulary_grammar_sizes_and_frame_counts(api: httpx.Client) -> None:
    listed = api.get("/v1/models").json()["data"]
    assert len(listed) == 1
    model = listed[0]
    assert model == api.get("/v1/models/hyv-tiny").json()
    assert model["sizes"] == ["32x32", "48x32"]
    assert model["frame_counts"] == [5, 9]
    assert model["vocabulary"] == sorted(default_caption_vocabulary())
    assert model["grammar"] == {
        "template": "a {color} {shape} {motion} on a {background} background",
        "slots": {
            "color": list(CAPTION_COLORS),
            "shape": list(CAPTION_SHAPES),
            "motion": list(CAPTION_MOTIONS),
            "background": list(CAPTION_BACKGROUNDS),
        },
        "example": GOOD,
    }
    # Every slot value is made of vocabulary words: a caption built from the grammar is accepted.
    words = set(model["vocabulary"])
    for values in model["grammar"]["slots"].values():
        assert all(set(value.split()) <= words for value in values)


def test_the_grammar_falls_back_to_the_vocabulary_without_a_saved_one(
    make_api_settings: Callable[..., Any],
    serve_app: Callable[[Any], Any],
    bucketed_bundle_dir: Path,
    tmp_path: Path,
) -> None:
    """A tokenizer.json saved before the grammar was stored in it (or with fewer words): the
    grammar is what the vocabulary covers; a slot value with an unknown word is left out."""
    import json
    import shutil

    bundle = tmp_path / "old-bundle"
    shutil.copytree(bucketed_bundle_dir, bundle)
    tokenizer = bundle / "text_encoder" / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    assert "grammar" in data  # saved by WordTokenizer.save
    del data["grammar"]
    data["words"] = [w for w in data["words"] if w not in ("cyan", "shrinking")]
    tokenizer.write_text(json.dumps(data))
    with _client(serve_app, make_api_settings(weights=bundle)) as client:
        model = client.get("/v1/models/hyv-tiny").json()
        assert "cyan" not in model["grammar"]["slots"]["color"]
        assert "shrinking" not in model["grammar"]["slots"]["motion"]
        assert model["grammar"]["slots"]["shape"] == list(CAPTION_SHAPES)
        error = error_of(as_json(client, {"prompt": "a cyan circle shrinking on a black background"}))
        assert "'cyan', 'shrinking'" in error["message"]


# --- other text encoders, and the bundled model -----------------------------------------------------


def test_a_model_with_the_llama_text_encoders_takes_any_text(
    make_api_settings: Callable[..., Any],
    serve_app: Callable[[Any], Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The tiny random diffusers-layout HunyuanVideo release (LLaMA + CLIP text encoders)."""
    release = release_folder(tmp_path_factory, "diffusers")
    settings = make_api_settings(weights=release, model_name="hunyuan-video-13b")
    with _client(serve_app, settings) as client:
        model = client.get("/v1/models/hunyuan-video-13b").json()
        assert model["vocabulary"] is None and model["grammar"] is None
        assert model["frame_counts"] is None and "720x720" in model["sizes"]
        for prompt in ("a cat playing piano", "一只猫在弹钢琴", "?!"):
            response = as_json(
                client, {"prompt": prompt, "negative_prompt": "blurry", "size": "720x720", "num_frames": 5}
            )
            assert response.status_code == 201, response.text


def test_the_bundled_model_as_shipped(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], Any]
) -> None:
    """weights/hyv-small: exactly the buckets its bundle.json lists, its vocabulary, and the
    message pointing at its own model route."""
    limits = read_bundle_spec(DEFAULT_BUNDLE_DIR).limits
    assert limits.buckets and limits.frame_counts
    settings = make_api_settings(weights=DEFAULT_BUNDLE_DIR, model_name="hyv-small")
    with _client(serve_app, settings) as client:
        model = client.get("/v1/models/hyv-small").json()
        assert model["sizes"] == [f"{w}x{h}" for w, h in limits.buckets]
        assert model["frame_counts"] == list(limits.frame_counts)
        assert (model["max_width"], model["max_height"], model["max_frames"]) == (
            max(w for w, _ in limits.buckets),
            max(h for _, h in limits.buckets),
            max(limits.frame_counts),
        )
        assert model["grammar"]["template"] == "a {color} {shape} {motion} on a {background} background"
        error = error_of(multipart(client, {"prompt": "a cat playing piano"}))
        assert error["message"] == (
            "prompt: words outside this model's vocabulary: 'cat', 'playing', 'piano'; "
            "see GET /v1/models/hyv-small for the vocabulary and grammar"
        )
        for size in model["sizes"]:
            for frames in model["frame_counts"]:
                response = multipart(client, {"prompt": GOOD, "size": size, "num_frames": frames})
                assert response.status_code == 201, response.text
        # OpenAI's sizes and seconds (what its SDK sends) map onto the buckets.
        for size, seconds, rendered in (
            ("1280x720", "4", "96x64"),
            ("1792x1024", "8", "96x64"),
            ("720x1280", "12", "64x96"),
            ("1024x1792", "4", "64x96"),
            ("512x512", "2", "128x128"),  # square: the largest square bucket, the nearest area
        ):
            video = multipart(client, {"prompt": GOOD, "size": size, "seconds": seconds}).json()
            frames = 17 if seconds == "2" else 33
            assert (video["size"], video["num_frames"], video["seconds"]) == (
                rendered,
                frames,
                str(frames // 8),
            )
        # An explicit num_frames is exact: refused, naming the lengths.
        too_long = error_of(as_json(client, {"prompt": GOOD, "num_frames": 65}))
        assert (
            too_long["param"] == "num_frames" and "is not one of this model's lengths" in too_long["message"]
        )
