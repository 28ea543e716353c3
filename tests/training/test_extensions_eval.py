"""`hyv train extensions` (hyv/training/eval/extensions.py): the size dip read off rendered clips,
the summary's arithmetic, and a real run with the bundled model through the command."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.training.data.grammar import ClipSpec
from hyv.training.data.render import render_clip
from hyv.training.eval.extensions import (
    EXTENSIONS_FILE,
    EXTENSIONS_SHEET,
    ExtensionCase,
    ExtensionConfig,
    case_reading,
    heldout_cases,
    size_dip,
    summarize,
)
from hyv.training.eval.judge import judge_clip


def _case(
    motion: str, same: bool, seam: float = 35.0, dip: float = 1.0, same_visible: bool | None = None
) -> ExtensionCase:
    """A case read `same` (and by the visible area alone `same_visible`: default `same`)."""
    same_visible = same if same_visible is None else same_visible
    return ExtensionCase(
        prompt=f"a red circle {motion} on a black background",
        motion=motion,
        source_motion=motion,
        extension_motion=motion if same else "standing still",
        source_area_ratio=1.0,
        extension_area_ratio=1.0,
        seam_psnr=seam,
        size_dip=dip,
        source_motion_visible_area=motion,
        extension_motion_visible_area=motion if same_visible else "shrinking",
    )


def test_size_dip_reads_a_kept_and_a_shrunk_object() -> None:
    still = ClipSpec("red", "square", "standing still", "black", 0.5, 0.5, 0.25, 0.0, 1.0)
    assert size_dip(judge_clip(render_clip(still, 17, 64))) == pytest.approx(1.0, abs=0.01)
    # Shrinking to half the side over 16 frames: the smallest of frames 1-4 is frame 4, whose side
    # is 1 - 0.5 * 4/16 = 0.875 of frame 0's, so its area is 0.766 of it.
    shrinking = dataclasses.replace(still, motion="shrinking", scale=0.5)
    assert size_dip(judge_clip(render_clip(shrinking, 17, 64))) == pytest.approx(0.875**2, abs=0.03)
    empty = np.zeros((17, 64, 64, 3), dtype=np.uint8)
    assert math.isnan(size_dip(judge_clip(empty)))


def test_summary_counts_per_motion_and_over_all() -> None:
    cases = [
        _case("growing", True, dip=0.7),
        _case("growing", False, dip=0.8),
        _case("moving up", True, seam=30.0),
        _case("moving up", True, seam=26.0, dip=math.nan),
        _case("moving left", True, same_visible=False),  # left the frame: shrinking by its visible area
    ]
    summary = summarize(cases)
    assert summary["n"] == 5 and summary["same_motion"] == 4 and summary["rate"] == 0.8
    assert summary["same_motion_visible_area"] == 3 and summary["rate_visible_area"] == 0.6
    assert summary["by_motion"]["growing"] == {
        "n": 2,
        "same_motion": 1,
        "rate": 0.5,
        "same_motion_visible_area": 1,
    }
    assert summary["by_motion"]["moving left"]["same_motion_visible_area"] == 0
    assert "[by visible area: moving left -> shrinking]" in case_reading(cases[-1])
    assert "visible area" not in case_reading(cases[0])
    assert summary["by_motion"]["moving up"]["rate"] == 1.0
    assert summary["seam_psnr_mean"] == pytest.approx((35 + 35 + 30 + 26 + 35) / 5)
    assert summary["seam_psnr_min"] == 26.0
    assert summary["size_dip_mean"] == pytest.approx((0.7 + 0.8 + 1.0 + 1.0) / 4)  # the nan left out
    assert summary["size_dip_min"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no extension cases"):
        summarize([])


def test_config_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="'flying' is not one of"):
        ExtensionConfig(bundle=DEFAULT_BUNDLE_DIR, motion="flying")
    with pytest.raises(ValueError, match="num_frames must be 4n\\+1"):
        ExtensionConfig(bundle=DEFAULT_BUNDLE_DIR, num_frames=18)


def test_heldout_cases_keep_the_full_runs_seeds() -> None:
    every = heldout_cases()
    growing = heldout_cases("growing")
    assert len(every) == 44 and [seed for seed, _ in every] == list(range(44))
    assert growing and all(attrs[2] == "growing" for _, attrs in growing)
    assert set(growing) <= set(every)  # a subset repeats the same (seed, combination) pairs


@pytest.mark.slow
def test_command_extends_the_bundled_model_and_writes_its_report(tmp_path: Path) -> None:
    from hyv.cli import app

    runner = CliRunner()
    args = ["train", "extensions", "--motion", "standing still", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    results = json.loads((tmp_path / EXTENSIONS_FILE).read_text())
    cases, summary = results["cases"], results["summary"]
    assert len(cases) == summary["n"] == len(heldout_cases("standing still"))
    assert summary["same_motion"] == sum(c["source_motion"] == c["extension_motion"] for c in cases)
    assert line["rate"] == round(summary["rate"], 4)
    assert all(c["motion"] == "standing still" for c in cases)
    # A still object keeps its place and its size across the seam, which is pinned to the source.
    assert summary["rate"] >= 5 / 6 and summary["size_dip_mean"] >= 0.85
    assert summary["seam_psnr_min"] >= 24.0
    sheet = Image.open(tmp_path / EXTENSIONS_SHEET)
    assert sheet.width >= 9 * 64 and sheet.height >= len(cases) * 64

    bad = runner.invoke(app, ["train", "extensions", "--motion", "flying", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "'flying' is not one of" in bad.output
    missing = runner.invoke(app, ["train", "extensions", "--bundle", str(tmp_path / "nope")])
    assert missing.exit_code == 2
