"""Extensions with the bundled model keep the motion going and leave no seam (issue 24's bar).

Over the 44 held-out combinations (never seen in training): a 17-frame clip is made from the
caption, then extended by 17 frames with the same caption (image-to-video from its last frame,
stitched: `video_mode="extend"`, as POST /v1/videos/extensions runs it; `hyv train extensions`
runs the same cases and writes their contact sheet). The judge reads the
motion of each segment; the two must agree in >= 85% of the clips, and the seam (the source's
last frame against the extension's first, which redraws it through the VAE) must be >= 28 dB PSNR
on average. Single frames the VAE reconstructs worse (a large square with sharp corners) may dip
below that, never under 24 dB: a seam not pinned to the source's frame measures ~15-20 dB.
"""

from __future__ import annotations

import logging

import pytest

from hyv.engine.pipeline import VideoPipeline
from hyv.training.eval.extensions import case_line, extension_cases, heldout_cases, summarize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
logger = logging.getLogger(__name__)

FRAMES = 17
MIN_SAME_MOTION = 0.85
MIN_SEAM_PSNR_DB = 28.0  # mean over the clips
MIN_CLIP_SEAM_PSNR_DB = 24.0


def test_extensions_continue_the_motion_without_a_seam(bundled_pipeline: VideoPipeline) -> None:
    cases = [case for case, _ in extension_cases(bundled_pipeline, heldout_cases(), FRAMES)]
    summary = summarize(cases)
    rows = "\n".join(case_line(case) for case in cases)
    logger.info(
        "extensions: same motion in %.1f%%, seam PSNR mean %.1f dB, min %.1f dB\n%s",
        100 * summary["rate"],
        summary["seam_psnr_mean"],
        summary["seam_psnr_min"],
        rows,
    )
    assert summary["n"] == 44
    assert summary["rate"] >= MIN_SAME_MOTION, rows
    assert summary["seam_psnr_mean"] >= MIN_SEAM_PSNR_DB, rows
    assert summary["seam_psnr_min"] >= MIN_CLIP_SEAM_PSNR_DB, rows
