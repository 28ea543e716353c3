"""The committed demonstration adapter (weights/hyv-small/loras/bouncing.safetensors) on the bundled
model, through the pipeline's own generation path (issue 25's LoRA bar).

Over the held-out bouncing combinations (5 colour/shape pairs on both backgrounds, never trained
on), two seeds each: with the adapter merged at scale 1.0 the judge reads >= 80% of the clips as
bouncing (the centroid falls then rises), with the colour kept; the base model alone draws no
bounce; with the adapter at scale 0 every video equals the base model's bit for bit, and the
base model's own DiT is never modified by a merge.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import video_to_uint8
from hyv.training.data.grammar import bouncing_heldout_combinations, caption
from hyv.training.eval.judge import judge_clip
from hyv.training.lora.adapter import read_adapter
from hyv.training.lora.evaluate import with_adapter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
logger = logging.getLogger(__name__)

ADAPTER = DEFAULT_BUNDLE_DIR / "loras" / "bouncing.safetensors"
SEEDS = (0, 1)
MIN_BOUNCING = 0.8
MAX_BASE_BOUNCING = 0.1
MIN_COLOR = 0.9
MIN_SHAPE = 0.7


def _video(pipeline: VideoPipeline, prompt: str, seed: int) -> torch.Tensor:
    chunks = pipeline.frames(GenerationRequest(prompt=prompt, num_frames=17, seed=seed))
    return torch.cat(list(chunks), dim=2)  # (1, 3, 17, H, W) in [-1, 1]


def test_adapter_file_is_small_and_describes_itself() -> None:
    adapter = read_adapter(ADAPTER)
    assert ADAPTER.stat().st_size < 1_000_000
    assert 4 <= adapter.rank <= 16
    meta = adapter.metadata
    assert meta["base_model"] == "hyv-small"
    assert meta["trigger"] == "a {color} {shape} bouncing on a {background} background"
    assert int(meta["steps"]) > 0


def test_bouncing_adapter_on_heldout_combinations(bundled_pipeline: VideoPipeline) -> None:
    adapter = read_adapter(ADAPTER)
    weights = {k: v.clone() for k, v in bundled_pipeline.dit.state_dict().items()}
    adapted = with_adapter(bundled_pipeline, adapter, 1.0)
    off = with_adapter(bundled_pipeline, adapter, 0.0)
    rows, bouncing, base_bouncing, color, shape = [], 0, 0, 0, 0
    first_base = None
    clips = [(a, seed) for seed in SEEDS for a in bouncing_heldout_combinations()]
    for attrs, seed in clips:
        prompt = caption(attrs)
        base = _video(bundled_pipeline, prompt, seed)
        first_base = base if first_base is None else first_base
        assert torch.equal(_video(off, prompt, seed), base), f"scale 0 changed the video of {prompt!r}"
        with_lora = judge_clip(video_to_uint8(_video(adapted, prompt, seed)[0]))
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
    # Merging wrote only into copies: the served DiT and its videos are the base model's.
    for name, value in bundled_pipeline.dit.state_dict().items():
        assert torch.equal(value, weights[name]), name
    first = clips[0]
    assert first_base is not None
    assert torch.equal(_video(bundled_pipeline, caption(first[0]), first[1]), first_base)
    assert np.isfinite(first_base.numpy()).all()
