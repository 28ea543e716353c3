"""Edits (SDEdit on a source video) and extensions (I2V from its last frame, stitched) in the
engine, on the tiny random model: what is kept of the source, what is re-run, and the errors."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.source_video import decode_frames, probe_video
from hyv.engine.video_io import encode_mp4, read_mp4
from tests.engine.test_pipeline import PROMPT, _bundle


@pytest.fixture(scope="module")
def i2v() -> VideoPipeline:
    return VideoPipeline(_bundle("latent_concat"), PipelineOptions())


@pytest.fixture(scope="module")
def source(i2v: VideoPipeline) -> bytes:
    return i2v.generate(GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, seed=1)).mp4


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def test_extension_keeps_the_source_and_redraws_its_last_frame(i2v: VideoPipeline, source: bytes) -> None:
    request = GenerationRequest(
        prompt=PROMPT, width=32, height=32, num_frames=5, video=source, video_mode="extend"
    )
    plan = i2v.plan(request)
    assert (plan.source_frames, plan.output_frames) == (9, 9 - 1 + 5)
    before = read_mp4(source)
    # the new segment's image condition: the source's last frame, as decoded
    assert plan.image is not None
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(plan.image))), before[-1])
    result = i2v.generate(request)
    after = read_mp4(result.mp4)
    assert after.shape == (13, 32, 32, 3) and result.summary()["num_frames"] == 13
    assert _psnr(after[:8], before[:8]) > 35  # the source's frames, once more through H.264


def test_edit_at_full_strength_is_the_plain_generation_and_lower_keeps_the_source(
    bundled_pipeline: VideoPipeline,
) -> None:
    # The bundled model (its 4 distilled steps: sigmas 1, 0.9375, 0.8333, 0.625, 0): the tiny random
    # model's VAE cannot reconstruct anything, so what an edit keeps shows only with a trained one.
    small = bundled_pipeline
    prompt = "a red circle moving right on a black background"
    base = GenerationRequest(prompt=prompt, num_frames=17, seed=7)
    made = small.generate(base).mp4
    plain, other = read_mp4(made), read_mp4(small.generate(base.model_copy(update={"seed": 8})).mp4)
    steps: list[int] = []

    def edit(strength: float, seed: int) -> np.ndarray:
        request = base.model_copy(
            update={"video": made, "video_mode": "edit", "strength": strength, "seed": seed}
        )
        steps.clear()
        mp4 = small.generate(
            request, on_progress=lambda p: steps.append(p.total) if p.stage == "denoise" else None
        )
        return read_mp4(mp4.mp4)

    assert np.array_equal(edit(1.0, 7), plain)  # from pure noise: the source is not used
    assert steps[-1] == 4
    light = edit(0.7, 8)  # enters at sigma 0.625: one step, another seed
    assert steps[-1] == 1
    kept, unrelated = _psnr(light, plain), _psnr(other, plain)
    assert kept > unrelated + 6, (kept, unrelated)  # the source decides, not the seed


def test_errors_name_the_problem(i2v: VideoPipeline, source: bytes) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        i2v.plan(GenerationRequest(prompt=PROMPT, video=b"not a video", video_mode="edit"))
    short = encode_mp4(read_mp4(source)[:5], fps=8)
    with pytest.raises(ValueError, match=re.escape("the source has 5 frames; an edit of 9 frames")):
        i2v.plan(
            GenerationRequest(
                prompt=PROMPT, width=32, height=32, num_frames=9, video=short, video_mode="edit"
            )
        )
    with pytest.raises(ValidationError, match="video and video_mode come together"):
        GenerationRequest(prompt=PROMPT, video=source)
    with pytest.raises(ValidationError, match="strength applies to video_mode 'edit' only"):
        GenerationRequest(prompt=PROMPT, video=source, video_mode="extend", strength=0.5)
    t2v = VideoPipeline(_bundle(), PipelineOptions())
    with pytest.raises(ValueError, match="cannot extend a video"):
        t2v.plan(GenerationRequest(prompt=PROMPT, width=32, height=32, video=source, video_mode="extend"))


def test_probe_reads_size_length_and_rate_and_fits_other_sizes(i2v: VideoPipeline) -> None:
    frames = np.zeros((5, 48, 80, 3), np.uint8)
    frames[:, :, 30:50] = 255  # a white band in the middle: it survives the center crop
    mp4 = encode_mp4(frames, fps=12)
    info = probe_video(mp4)
    assert (info.width, info.height, info.num_frames, round(info.fps)) == (80, 48, 5, 12)
    assert decode_frames(mp4).shape == (5, 48, 80, 3)
    request = GenerationRequest(
        prompt=PROMPT, width=32, height=32, num_frames=5, video=mp4, video_mode="extend"
    )
    out = read_mp4(i2v.generate(request).mp4)
    assert out.shape == (9, 32, 32, 3)  # 5 - 1 + 5, fitted to 32x32
    assert out[0, :, 12:20].mean() > 200 and out[0, :, :4].mean() < 40  # the band, centered
