import re

import pytest

from hyv.engine.bundle import BUNDLE_PRESETS
from hyv.engine.limits import BUCKETS_540P, BUCKETS_720P, resolve
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
