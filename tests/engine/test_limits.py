import dataclasses
import json
import re

import pytest

from hyv.engine.bundle import (
    BUNDLE_PRESETS,
    DEFAULT_BUNDLE_DIR,
    init_random_bundle,
    read_bundle_spec,
    save_bundle,
)
from hyv.engine.limits import BUCKETS_540P, BUCKETS_720P, ModelLimits, resolve
from hyv.engine.request import GenerationRequest

LIMITS_13B = BUNDLE_PRESETS["hunyuan-video-13b"].limits
LIMITS_I2V = BUNDLE_PRESETS["hunyuan-video-i2v-13b"].limits


@pytest.mark.parametrize(("width", "height"), BUCKETS_540P + BUCKETS_720P)
def test_every_13b_bucket_resolves(width: int, height: int) -> None:
    plan = resolve(GenerationRequest(prompt="a cat", width=width, height=height, num_frames=129), LIMITS_13B)
    assert (plan.width, plan.height, plan.latent_frames) == (width, height, 33)


def test_13b_defaults_are_540p_16_9_129_frames() -> None:
    plan = resolve(GenerationRequest(prompt="a cat", seed=1), LIMITS_13B)
    assert (plan.width, plan.height, plan.num_frames, plan.steps, plan.flow_shift) == (960, 544, 129, 50, 7.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 1024, "height": 576}, "size 1024x576 is not one of this model's resolution buckets"),
        ({"width": 960, "height": 544, "num_frames": 133}, "num_frames must be 4n+1 in [1, 129], got 133"),
        ({"width": 1296, "height": 720}, "width must be a multiple of 16 in [16, 1280], got 1296"),
        ({"steps": 101}, "steps must be in [1, 100], got 101"),
    ],
)
def test_13b_refuses_sizes_outside_its_buckets(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(GenerationRequest(prompt="a cat", **fields), LIMITS_13B)


def test_i2v_only_model_requires_an_image() -> None:
    with pytest.raises(ValueError, match="image is required"):
        resolve(GenerationRequest(prompt="a cat"), LIMITS_I2V)
    assert resolve(GenerationRequest(prompt="a cat", image=b"png"), LIMITS_I2V).image == b"png"


SMALL = ModelLimits(
    width=64, height=64, num_frames=17, max_width=128, max_height=128, max_frames=33,
    buckets=((64, 64), (96, 64), (64, 96), (128, 128)), frame_counts=(1, 17, 33),
)  # fmt: skip


@pytest.mark.parametrize("size", SMALL.buckets or ())
@pytest.mark.parametrize("frames", SMALL.frame_counts or ())
def test_every_bucket_and_length_resolves(size: tuple[int, int], frames: int) -> None:
    plan = resolve(GenerationRequest(prompt="a", width=size[0], height=size[1], num_frames=frames), SMALL)
    assert (plan.width, plan.height, plan.num_frames) == (*size, frames)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_frames": 65}, "num_frames 65 is not one of this model's lengths: 1, 17, 33 frames"),
        ({"num_frames": 9}, "num_frames 9 is not one of this model's lengths: 1, 17, 33 frames"),
        ({"num_frames": 18}, "num_frames 18 is not one of this model's lengths: 1, 17, 33 frames"),
        (
            {"width": 96, "height": 96},
            "size 96x96 is not one of this model's resolution buckets: 64x64, 96x64, ",
        ),
        (
            {"width": 256, "height": 256},
            "width must be a multiple of 16 in [16, 128], got 256 "
            "(this model's sizes: 64x64, 96x64, 64x96, 128x128)",
        ),
    ],
)
def test_lengths_and_sizes_outside_the_model_name_the_ones_it_has(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve(GenerationRequest(prompt="a", **fields), SMALL)


def test_without_frame_counts_any_4n_plus_1_goes() -> None:
    limits = dataclasses.replace(SMALL, frame_counts=None)
    assert resolve(GenerationRequest(prompt="a", num_frames=9), limits).num_frames == 9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"frame_counts": (17, 18)}, "frame_counts must be 4n+1 in [1, 33] (max_frames), got [17, 18]"),
        ({"frame_counts": (17, 65)}, "frame_counts must be 4n+1 in [1, 33] (max_frames), got [17, 65]"),
        ({"frame_counts": ()}, "frame_counts must be 4n+1 in [1, 33] (max_frames), got []"),
        ({"frame_counts": (1, 33)}, "the default num_frames 17 is not in frame_counts [1, 33]"),
    ],
)
def test_inconsistent_frame_counts_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(SMALL, **fields)


def test_buckets_and_frame_counts_survive_bundle_json(tmp_path) -> None:
    """Written by save_bundle (JSON lists), read back by read_bundle_spec (tuples, sorted)."""
    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(
        bundle.spec.limits, num_frames=5, frame_counts=(9, 5, 1), buckets=((32, 32), (48, 32))
    )
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    save_bundle(bundle, tmp_path)
    raw = json.loads((tmp_path / "bundle.json").read_text())["limits"]
    assert raw["frame_counts"] == [1, 5, 9] and raw["buckets"] == [[32, 32], [48, 32]]
    assert read_bundle_spec(tmp_path).limits == limits
    assert limits.frame_counts == (1, 5, 9)


def test_a_bundle_json_without_frame_counts_allows_any_length(tmp_path) -> None:
    save_bundle(init_random_bundle("tiny"), tmp_path)
    raw = json.loads((tmp_path / "bundle.json").read_text())
    del raw["limits"]["frame_counts"]
    (tmp_path / "bundle.json").write_text(json.dumps(raw))
    assert read_bundle_spec(tmp_path).limits.frame_counts is None


def test_the_bundled_model_serves_what_it_was_evaluated_at() -> None:
    """weights/hyv-small lists its buckets and lengths, and its limits enclose exactly them."""
    limits = read_bundle_spec(DEFAULT_BUNDLE_DIR).limits
    assert limits.buckets and limits.frame_counts
    assert (limits.width, limits.height) in limits.buckets and limits.num_frames in limits.frame_counts
    assert limits.max_width == max(w for w, _ in limits.buckets)
    assert limits.max_height == max(h for _, h in limits.buckets)
    assert limits.max_frames == max(limits.frame_counts)
