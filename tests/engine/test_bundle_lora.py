"""The committed demonstration adapter (weights/hyv-small/loras/bouncing.safetensors) on the bundled
model, read from the bundle's loras/ folder and applied per request by the pipeline's own generation
path, as served (issue 25's LoRA bar).

Over the held-out bouncing combinations (5 colour/shape pairs on both backgrounds, never trained
on), two seeds each: with the adapter merged at scale 1.0 the judge reads >= 80% of the clips as
bouncing (the centroid falls then rises), with the colour kept; the base model alone draws no
bounce; with the adapter at scale 0 every video equals the base model's bit for bit, and the
base model's weights are back after every request with the adapter.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import VideoPipeline
from hyv.engine.request import GenerationRequest, LoraChoice
from hyv.engine.video_io import video_to_uint8
from hyv.training.data.grammar import bouncing_heldout_combinations, caption
from hyv.training.eval.judge import judge_clip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
logger = logging.getLogger(__name__)

NAME = "bouncing"
ADAPTER = DEFAULT_BUNDLE_DIR / "loras" / f"{NAME}.safetensors"
SEEDS = (0, 1)
MIN_BOUNCING = 0.8
MAX_BASE_BOUNCING = 0.1
MIN_COLOR = 0.9
MIN_SHAPE = 0.7


def _video(pipeline: VideoPipeline, prompt: str, seed: int, scale: float | None = None) -> torch.Tensor:
    """The pipeline's video; with `scale`, the bouncing adapter applied at that scale."""
    loras = () if scale is None else (LoraChoice(name=NAME, scale=scale),)
    chunks = pipeline.frames(GenerationRequest(prompt=prompt, num_frames=17, seed=seed, loras=loras))
    return torch.cat(list(chunks), dim=2)  # (1, 3, 17, H, W) in [-1, 1]


def test_adapter_file_is_small_and_describes_itself(bundled_pipeline: VideoPipeline) -> None:
    assert NAME in bundled_pipeline.loras.names()
    adapter = bundled_pipeline.loras.load(NAME, bundled_pipeline.dit)
    assert ADAPTER.stat().st_size < 1_000_000
    assert adapter.format == "native"
    ranks = {part.down.shape[0] for parts in adapter.parts.values() for part in parts}
    assert len(ranks) == 1 and 4 <= min(ranks) <= 16
    meta = adapter.metadata
    assert meta["format"] == "hyv-lora"
    assert meta["base_model"] == "hyv-small"
    assert meta["trigger"] == "a {color} {shape} bouncing on a {background} background"
    assert int(meta["steps"]) > 0


def test_bouncing_adapter_on_heldout_combinations(bundled_pipeline: VideoPipeline) -> None:
    weights = {k: v.clone() for k, v in bundled_pipeline.dit.state_dict().items()}
    rows, bouncing, base_bouncing, color, shape = [], 0, 0, 0, 0
    first_base = None
    clips = [(a, seed) for seed in SEEDS for a in bouncing_heldout_combinations()]
    for attrs, seed in clips:
        prompt = caption(attrs)
        base = _video(bundled_pipeline, prompt, seed)
        first_base = base if first_base is None else first_base
        assert torch.equal(_video(bundled_pipeline, prompt, seed, 0.0), base), (
            f"scale 0 changed the video of {prompt!r}"
        )
        with_lora = judge_clip(video_to_uint8(_video(bundled_pipeline, prompt, seed, 1.0)[0]))
        without = judge_clip(video_to_uint8(base[0]))
        bouncing += with_lora.motion == "bouncing"
        base_bouncing += without.motion == "bouncing"
        color += with_lora.color == attrs.color
        shape += with_lora.shape == attrs.shape
        rows.append(
            f"{prompt} (seed {seed}): adapter {with_lora.color} {with_lora.shape} {with_lora.motion} "
            f"(bounce {with_lora.bounce:.2f}); base {without.motion}"
        )
    n = len(clips)
    logger.info(
        "bouncing adapter: %.0f%% bouncing (base %.0f%%), colour %.0f%%, shape %.0f%%\n%s",
        100 * bouncing / n,
        100 * base_bouncing / n,
        100 * color / n,
        100 * shape / n,
        "\n".join(rows),
    )
    report = "\n".join(rows)
    assert bouncing / n >= MIN_BOUNCING, report
    assert base_bouncing / n <= MAX_BASE_BOUNCING, report
    assert color / n >= MIN_COLOR and shape / n >= MIN_SHAPE, report
    # The merges came off after each request: the DiT's weights and videos are the base model's.
    for name, value in bundled_pipeline.dit.state_dict().items():
        assert torch.equal(value, weights[name]), name
    first = clips[0]
    assert first_base is not None
    assert torch.equal(_video(bundled_pipeline, caption(first[0]), first[1]), first_base)
    assert np.isfinite(first_base.numpy()).all()
