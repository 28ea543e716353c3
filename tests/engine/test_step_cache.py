"""Step caching (hyv.engine.step_cache): the policies on crafted numbers, the option's parsing,
the runner on real pipelines (skip counts, bit-identical when off, true CFG's two branches, I2V),
calibration into bundle.json and the FLOPs a skip saves on the meta 13B."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hyv.engine.bundle import init_random_bundle, read_bundle_spec
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.step_cache import StepCacheConfig, parse_cache
from hyv.engine.step_cache.calibrate import (
    fit_coefficients,
    open_pipeline,
    record_pairs,
    write_coefficients,
)
from hyv.engine.step_cache.flops import skip_flops
from hyv.engine.step_cache.policy import FirstBlockPolicy, TeaCachePolicy, rescale
from hyv.engine.step_cache.runner import StepCache, relative_l1
from hyv.models import HunyuanVideoDiT, dit_preset
from hyv.training.data.grammar import heldout_combinations, parse_caption, training_captions

PROMPT = "a red circle moving left on a black background"


# --- policies and option -----------------------------------------------------------------------


def test_teacache_accumulates_rescaled_changes_until_the_threshold() -> None:
    policy = TeaCachePolicy(threshold=0.1, total_steps=8)
    changes = [None, 0.04, 0.04, 0.04, 0.02, 0.09, 0.01, 0.5]
    decisions = [policy.compute(step, change) for step, change in enumerate(changes)]
    # 0: first step. 0.04, 0.08 stay under 0.1; 0.12 reaches it (compute, reset); 0.02 under;
    # 0.11 computes; 0.01 under; the last step always computes.
    assert decisions == [True, False, False, True, False, True, False, True]


def test_teacache_rescales_by_the_fitted_polynomial() -> None:
    coefficients = (2.0, 0.0)  # y = 2x: the output moves twice as much as the input
    assert rescale(coefficients, 0.03) == pytest.approx(0.06)
    assert rescale((-1.0, 0.0), 0.5) == 0.0  # a fit below zero never pays changes back
    policy = TeaCachePolicy(threshold=0.1, total_steps=6, coefficients=coefficients)
    assert [policy.compute(s, c) for s, c in enumerate([None, 0.03, 0.03, 0.03, 0.03, 0.03])] == [
        True,
        False,  # 0.06
        True,  # 0.12
        False,
        True,
        True,
    ]


def test_first_block_policy_compares_each_change_with_the_threshold() -> None:
    policy = FirstBlockPolicy(threshold=0.05, total_steps=5)
    assert [policy.compute(s, c) for s, c in enumerate([None, 0.01, 0.07, 0.049, 0.0])] == [
        True,
        False,
        True,
        False,
        True,  # the last step
    ]
    with pytest.raises(ValueError, match="threshold must be positive"):
        FirstBlockPolicy(0.0, 5)


def test_relative_l1_is_the_largest_over_the_batch_and_ignores_padding() -> None:
    previous = torch.ones(2, 3, 4)
    current = previous.clone()
    current[0] += 0.1  # sample 0 moves 10%
    current[1, :2] += 0.3  # sample 1 moves 30% on its 2 valid tokens...
    current[1, 2] += 100.0  # ...and a lot on a padded one
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert relative_l1(current, previous, valid) == pytest.approx(0.3)
    assert relative_l1(previous, previous, valid) == 0.0
    assert relative_l1(current, torch.zeros_like(previous), valid) == math.inf


def test_cache_option_forms_and_errors() -> None:
    assert GenerationRequest(prompt=PROMPT, cache="teacache").cache == StepCacheConfig(
        mode="teacache", threshold=0.1
    )
    assert GenerationRequest(prompt=PROMPT, cache={"mode": "first_block", "threshold": 0.2}).cache == (
        StepCacheConfig(mode="first_block", threshold=0.2)
    )
    assert StepCacheConfig.model_validate('{"mode": "teacache", "threshold": 0.3}').threshold == 0.3
    assert GenerationRequest(prompt=PROMPT, cache="off").cache == StepCacheConfig()
    assert parse_cache("TeaCache", 0.05) == StepCacheConfig(mode="teacache", threshold=0.05)
    with pytest.raises(ValueError, match=r"'fast'.*modes: off, teacache, first_block"):
        parse_cache("fast")
    with pytest.raises(ValueError, match="greater than 0"):
        parse_cache("teacache", -1.0)
    with pytest.raises(ValueError, match="not 'off'"):
        parse_cache("off", 0.1)


# --- the runner on pipelines ---------------------------------------------------------------------


def _random_dit(guidance_embed: bool = True, image_condition: str | None = None) -> HunyuanVideoDiT:
    torch.manual_seed(1)
    config = dit_preset("tiny").replace(guidance_embed=guidance_embed, image_condition=image_condition)
    dit = HunyuanVideoDiT(config)
    for param in dit.parameters():  # random, not zero-gated: every block matters
        param.data.normal_(0.0, 0.1)
    return dit


def _pipeline(true_cfg: bool = False, image_condition: str | None = None) -> VideoPipeline:
    bundle = init_random_bundle("tiny", seed=0)
    bundle.dit = _random_dit(guidance_embed=not true_cfg, image_condition=image_condition)
    return VideoPipeline(bundle, PipelineOptions())


def _frames(pipeline: VideoPipeline, request: GenerationRequest) -> torch.Tensor:
    return torch.cat(list(pipeline.frames(request)), dim=2)


REQUEST = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, steps=12, seed=3)


def _req(base: GenerationRequest = REQUEST, **fields: object) -> GenerationRequest:
    """`base` with `fields` replaced, validated (model_copy would keep a raw dict)."""
    return GenerationRequest(**{**base.model_dump(), **fields})


@pytest.fixture(scope="module")
def tiny() -> VideoPipeline:
    return _pipeline()


def test_off_is_bit_identical_to_the_pipeline_without_the_cache(tiny: VideoPipeline) -> None:
    cached_off = _frames(tiny, _req(cache=StepCacheConfig()))
    default = _frames(tiny, REQUEST)  # no cache named, no server default: off
    assert tiny.last_step_cache == {"mode": "off", "threshold": None, "computed": 12, "skipped": 0}
    tiny.step_cache.uninstall()
    try:
        assert "run_blocks" not in vars(tiny.dit)
        plain = _frames(tiny, REQUEST)
    finally:
        tiny.step_cache.install()
    assert torch.equal(cached_off, plain) and torch.equal(default, plain)


@pytest.mark.parametrize("mode", ["teacache", "first_block"])
def test_skip_counts_follow_the_threshold(tiny: VideoPipeline, mode: str) -> None:
    plain = _frames(tiny, REQUEST)
    # A threshold nothing reaches: only the first and the last step run the stack.
    lax = _frames(tiny, _req(cache={"mode": mode, "threshold": 10.0}))
    assert tiny.last_step_cache == {"mode": mode, "threshold": 10.0, "computed": 2, "skipped": 10}
    # One every step exceeds: every step computes, and (same ops in the same order) bit for bit.
    strict = _frames(tiny, _req(cache={"mode": mode, "threshold": 1e-9}))
    assert tiny.last_step_cache == {"mode": mode, "threshold": 1e-9, "computed": 12, "skipped": 0}
    assert torch.equal(strict, plain)
    assert not torch.equal(lax, plain)
    summary = tiny.generate(_req(cache=mode)).summary()
    assert (
        summary["cache"]["mode"] == mode and summary["cache"]["computed"] + summary["cache"]["skipped"] == 12
    )


def test_the_server_default_applies_to_requests_without_a_cache() -> None:
    bundle = init_random_bundle("tiny", seed=0)
    bundle.dit = _random_dit()
    pipeline = VideoPipeline(bundle, PipelineOptions(default_cache=parse_cache("teacache", 10.0)))
    pipeline.generate(REQUEST)
    assert pipeline.last_step_cache == {"mode": "teacache", "threshold": 10.0, "computed": 2, "skipped": 10}
    pipeline.generate(_req(cache="off"))  # the request's own wins
    assert pipeline.last_step_cache is not None and pipeline.last_step_cache["skipped"] == 0


def test_true_cfg_both_branches_share_one_decision_and_keep_their_own_residuals() -> None:
    dit = _random_dit().eval().requires_grad_(False)
    cache = StepCache(dit).install()
    c = dit.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, 3, 4, 4, generator=gen)  # (uncond, cond), as _velocity_fn batches them
    text = torch.randn(2, 5, c.text_dim, generator=gen)
    mask = torch.ones(2, 5)
    pooled = torch.randn(2, c.pooled_dim, generator=gen)
    t = torch.full((2,), 500.0)
    guidance = torch.full((2,), 1000.0)
    config = StepCacheConfig(mode="first_block", threshold=0.05)
    with torch.inference_mode(), cache.trajectory(config, total_steps=4) as stats:
        first = dit(x, t, text, mask, pooled, guidance)
        again = dit(x, t, text, mask, pooled, guidance)  # unchanged: both branches skip
        assert (stats.computed, stats.skipped) == (1, 1)
        # Each branch gets its own cached residual back (the two differ).
        torch.testing.assert_close(again, first, atol=1e-5, rtol=1e-5)
        assert (first[0] - first[1]).abs().mean() > 1e-2
        # Only the cond branch moves: the joint decision recomputes both.
        moved = x.clone()
        moved[1] += 0.5 * torch.randn(moved[1].shape, generator=gen)
        out = dit(moved, t, text, mask, pooled, guidance)
        assert (stats.computed, stats.skipped) == (2, 1)
    cache.uninstall()
    with torch.inference_mode():
        assert torch.equal(out, dit(moved, t, text, mask, pooled, guidance))  # a computed step is exact


def test_true_cfg_pipeline_counts_one_stack_per_step() -> None:
    pipeline = _pipeline(true_cfg=True)
    request = _req(guidance=4.0, negative_prompt="blurry")
    batches: list[int] = []
    hook = pipeline.dit.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        pipeline.generate(_req(request, cache={"mode": "teacache", "threshold": 10.0}))
    finally:
        hook.remove()
    assert batches == [2] * 12  # both branches, one forward per step
    assert pipeline.last_step_cache == {"mode": "teacache", "threshold": 10.0, "computed": 2, "skipped": 10}


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["teacache", "first_block"])
def test_i2v_with_the_cache_keeps_the_image_latent_in_frame_zero(mode: str) -> None:
    pipeline = _pipeline(image_condition="latent_concat")
    request = _req(image=_png(32, 32), cache={"mode": mode, "threshold": 10.0})
    plan = pipeline.plan(request)
    with torch.inference_mode():
        cond = pipeline._image_condition(plan)
        text, uncond = pipeline._encode_text(plan)
        latents = pipeline._denoise(plan, text, uncond, cond, None, lambda: None)
    assert cond is not None and torch.equal(latents[:, :, :1], cond[:, :16, :1])
    assert pipeline.last_step_cache is not None and pipeline.last_step_cache["skipped"] == 10
    cached = _frames(pipeline, request)
    plain = _frames(pipeline, _req(request, cache="off"))
    assert cached.shape == plain.shape == (1, 3, 9, 32, 32)


# --- calibration -------------------------------------------------------------------------------


def test_calibration_prompts_are_training_captions() -> None:
    prompts = training_captions(10)
    held = set(heldout_combinations())
    assert len(set(prompts)) == 10 and not any(parse_caption(p) in held for p in prompts)
    with pytest.raises(ValueError, match="prompts must be in"):
        training_captions(0)


def test_fit_recovers_a_known_polynomial_and_needs_enough_pairs() -> None:
    x = np.linspace(0.01, 0.3, 40)
    y = 3.0 * x**2 + 0.5 * x + 0.01
    pairs = np.stack([x, y], axis=1)
    np.testing.assert_allclose(fit_coefficients(pairs), [0.0, 0.0, 3.0, 0.5, 0.01], atol=1e-6)
    with pytest.raises(ValueError, match="need more than 4"):
        fit_coefficients(pairs[:4])


def test_calibrate_writes_coefficients_that_load_back(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle_dir)
    assert read_bundle_spec(bundle_dir).step_cache_coefficients is None  # an old bundle: identity
    assert VideoPipeline.from_dir(bundle_dir, PipelineOptions()).step_cache.coefficients == (1.0, 0.0)
    pipeline = open_pipeline(bundle_dir, PipelineOptions(true_cfg=True), steps=6)
    pairs = record_pairs(pipeline, training_captions(2), steps=6)
    assert pairs.shape == (10, 2) and np.isfinite(pairs).all() and (pairs > 0).all()
    coefficients = fit_coefficients(pairs)
    write_coefficients(bundle_dir, coefficients)
    raw = json.loads((bundle_dir / "bundle.json").read_text())
    assert raw["step_cache_coefficients"] == coefficients and raw["name"] == "hyv-small"
    assert read_bundle_spec(bundle_dir).step_cache_coefficients == tuple(coefficients)
    assert VideoPipeline.from_dir(bundle_dir, PipelineOptions()).step_cache.coefficients == tuple(
        coefficients
    )


# --- FLOPs -------------------------------------------------------------------------------------


def test_a_skip_saves_the_block_stack_flops_of_the_13b_at_720p() -> None:
    report = skip_flops()
    assert report.video_tokens == 33 * 45 * 80 and report.text_tokens == 256
    # Almost the whole forward is the 20 double + 40 single blocks; the first is one of 60.
    assert 0.99 < report.stack_flops / report.step_flops < 1.0
    assert report.saved_teacache == report.stack_flops - report.teacache_check_flops
    assert report.saved_first_block == report.stack_flops - report.first_block_flops
    assert 1e16 < report.saved_teacache < 2e16  # 12 PFLOP per forward at 720p x 129 frames


def test_two_pipelines_of_one_bundle_share_the_dits_cache() -> None:
    bundle = init_random_bundle("tiny", seed=0)
    first = VideoPipeline(bundle, PipelineOptions())
    second = VideoPipeline(bundle, PipelineOptions(true_cfg=True))
    assert second.step_cache is first.step_cache and first.step_cache.installed
    with pytest.raises(RuntimeError, match="already installed"):
        first.step_cache.install()
