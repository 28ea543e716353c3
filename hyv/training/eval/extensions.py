"""Extensions judged: does an extended video keep its source's motion, and do the seam and the
object's size hold (`hyv train extensions`; the bar of tests/engine/test_bundle_extensions.py).

For each held-out combination (all 44, or those of one motion), as POST /v1/videos/extensions runs
it: a ``num_frames`` clip from the caption (noise seed = the combination's index), then an
extension by ``num_frames`` frames with the same caption (``video_mode="extend"``: image-to-video
from the source's last frame, stitched; seed + ``seed_offset``). The judge reads the source
segment (the first ``num_frames`` frames of the stitched video) and the new one (from the seam
frame on, ``num_frames`` frames); the extension keeps the motion when both read the same.

Per case it also records:
- both segments' motions read by the visible area alone (the judge's ``cut_edges=False``), where an
  object leaving the frame shrinks (hyv/training/eval/judge.py, step 5): the true continuations of
  14 of the 44 held-out clips read as the wrong motion that way;
- the seam's PSNR: the source's last frame against the stitched video's frame there (the
  extension's first frame, which redraws it through the VAE);
- the size dip: the smallest object area over the first generated latent frame's pixel frames
  (the ``TIME_STRIDE`` frames after the seam) relative to the seam frame's. 1 means the object
  keeps its size across the seam; an extension that first redraws the object smaller reads
  below 1 (docs/training.md, "Eighth attempt").

`hyv train extensions` writes ``extensions.json`` (every case and the summary) and
``extensions.png`` (a contact sheet: each stitched video, its verdicts above).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyv.engine.limits import TIME_STRIDE
from hyv.engine.pipeline import VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.training.data.grammar import MOTIONS, Attributes, caption, heldout_combinations
from hyv.training.eval.judge import Judgement, judge_clip
from hyv.training.eval.metrics import psnr
from hyv.training.eval.sheet import SheetRow, save_contact_sheet

logger = logging.getLogger(__name__)

EXTENSIONS_FILE = "extensions.json"
EXTENSIONS_SHEET = "extensions.png"


@dataclass(frozen=True)
class ExtensionConfig:
    bundle: Path
    out_dir: Path = Path("runs/extensions")
    num_frames: int = 17  # of the source and of the extension (the seam frame counted in both)
    motion: str | None = None  # only the held-out combinations with this motion; None: all 44
    seed_offset: int = 1000  # the extension's noise seed is the source's plus this
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle", Path(self.bundle))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.num_frames < 1 + TIME_STRIDE or (self.num_frames - 1) % TIME_STRIDE:
            raise ValueError(f"num_frames must be 4n+1 and >= 5, got {self.num_frames}")
        if self.motion is not None and self.motion not in MOTIONS:
            raise ValueError(f"motion {self.motion!r} is not one of {list(MOTIONS)}")


@dataclass(frozen=True)
class ExtensionCase:
    prompt: str
    motion: str  # the caption's
    source_motion: str | None  # the judge's reading of the source segment
    extension_motion: str | None  # ... and of the new segment
    source_area_ratio: float  # fitted last / first object area over the segment
    extension_area_ratio: float
    seam_psnr: float  # dB
    size_dip: float  # smallest area right after the seam / area at the seam
    # both segments read with `judge_clip(cut_edges=False)`: objects leaving the frame shrink
    source_motion_visible_area: str | None = None
    extension_motion_visible_area: str | None = None

    @property
    def same_motion(self) -> bool:
        return self.source_motion == self.extension_motion

    @property
    def same_motion_visible_area(self) -> bool:
        return self.source_motion_visible_area == self.extension_motion_visible_area


def size_dip(extension: Judgement) -> float:
    """The smallest object area over the `TIME_STRIDE` frames after the first of a judged extension
    segment, relative to the first's; nan when the judge found no object in the first."""
    areas = extension.frame_area[: 1 + TIME_STRIDE]
    if len(areas) < 2 or not areas[0] > 0.0:
        return math.nan
    return float(np.nanmin(np.asarray(areas[1:], dtype=np.float64)) / areas[0])


def extend_case(
    pipeline: VideoPipeline, attrs: Attributes, seed: int, num_frames: int, seed_offset: int
) -> tuple[ExtensionCase, np.ndarray]:
    """One held-out combination's source and extension, judged; returns the case and the stitched
    video (T, H, W, 3) uint8."""
    prompt = caption(attrs)
    source = pipeline.generate(GenerationRequest(prompt=prompt, num_frames=num_frames, seed=seed)).mp4
    request = GenerationRequest(
        prompt=prompt, num_frames=num_frames, seed=seed + seed_offset, video=source, video_mode="extend"
    )
    stitched = read_mp4(pipeline.generate(request).mp4)
    if stitched.shape[0] != 2 * num_frames - 1:
        raise RuntimeError(f"the extension has {stitched.shape[0]} frames, expected {2 * num_frames - 1}")
    seam = num_frames - 1
    first, second = judge_clip(stitched[:num_frames]), judge_clip(stitched[seam:])
    first_visible = judge_clip(stitched[:num_frames], cut_edges=False)
    second_visible = judge_clip(stitched[seam:], cut_edges=False)
    case = ExtensionCase(
        prompt=prompt,
        motion=attrs[2],
        source_motion=first.motion,
        extension_motion=second.motion,
        source_area_ratio=first.area_ratio,
        extension_area_ratio=second.area_ratio,
        seam_psnr=psnr(read_mp4(source)[-1], stitched[seam]),
        size_dip=size_dip(second),
        source_motion_visible_area=first_visible.motion,
        extension_motion_visible_area=second_visible.motion,
    )
    return case, stitched


def extension_cases(
    pipeline: VideoPipeline,
    combinations: Sequence[tuple[int, Attributes]],
    num_frames: int = 17,
    seed_offset: int = 1000,
) -> Iterator[tuple[ExtensionCase, np.ndarray]]:
    """`extend_case` for each (seed, attributes) pair, in order."""
    for seed, attrs in combinations:
        yield extend_case(pipeline, attrs, seed, num_frames, seed_offset)


def heldout_cases(motion: str | None = None) -> list[tuple[int, Attributes]]:
    """(seed, attributes) of the held-out combinations (those of `motion` only, if given): the seed is
    the combination's index among all 44, so a subset repeats the full run's clips."""
    return [(i, a) for i, a in enumerate(heldout_combinations()) if motion is None or a[2] == motion]


def summarize(cases: Sequence[ExtensionCase]) -> dict[str, Any]:
    """The same-motion rate over all cases and per caption motion, the seam PSNR (mean, min) and the
    size dip (mean, min)."""
    if not cases:
        raise ValueError("no extension cases to summarize")
    by_motion: dict[str, dict[str, float]] = {}
    for motion in dict.fromkeys(c.motion for c in cases):
        group = [c for c in cases if c.motion == motion]
        same, visible = sum(c.same_motion for c in group), sum(c.same_motion_visible_area for c in group)
        by_motion[motion] = {
            "n": len(group),
            "same_motion": same,
            "rate": same / len(group),
            "same_motion_visible_area": visible,
        }
    seams = np.array([c.seam_psnr for c in cases])
    dips = np.array([c.size_dip for c in cases], dtype=np.float64)
    same, visible = sum(c.same_motion for c in cases), sum(c.same_motion_visible_area for c in cases)
    return {
        "n": len(cases),
        "same_motion": same,
        "rate": same / len(cases),
        "same_motion_visible_area": visible,
        "rate_visible_area": visible / len(cases),
        "by_motion": by_motion,
        "seam_psnr_mean": float(seams.mean()),
        "seam_psnr_min": float(seams.min()),
        "size_dip_mean": float(np.nanmean(dips)) if np.isfinite(dips).any() else math.nan,
        "size_dip_min": float(np.nanmin(dips)) if np.isfinite(dips).any() else math.nan,
    }


def case_reading(case: ExtensionCase) -> str:
    """What the judge read off a case: both segments' motions (and, where it differs, the reading by
    the visible area alone), the seam and the size dip."""
    cut = ""
    if (case.source_motion_visible_area, case.extension_motion_visible_area) != (
        case.source_motion,
        case.extension_motion,
    ):
        cut = f" [by visible area: {case.source_motion_visible_area} -> {case.extension_motion_visible_area}]"
    return (
        f"{case.source_motion} (area x{case.source_area_ratio:.2f}) -> {case.extension_motion} "
        f"(x{case.extension_area_ratio:.2f}){cut}, seam {case.seam_psnr:.1f} dB, "
        f"size dip {case.size_dip:.2f}"
    )


def case_line(case: ExtensionCase) -> str:
    return f"{case.prompt}: {case_reading(case)}"


def run_extensions(config: ExtensionConfig) -> dict[str, Any]:
    """Every case of `config`, judged; writes extensions.json and extensions.png into out_dir."""
    from hyv.training.eval.runner import open_bundle

    pipeline = open_bundle(config.bundle, "extended", config.device, config.dtype)
    started = time.perf_counter()
    cases, rows = [], []
    for case, stitched in extension_cases(
        pipeline, heldout_cases(config.motion), config.num_frames, config.seed_offset
    ):
        cases.append(case)
        verdict = "kept" if case.same_motion else "WRONG"
        rows.append(SheetRow([case.prompt, f"{verdict}: {case_reading(case)}"], stitched))
        logger.info("%s", case_line(case))
    results = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "summary": summarize(cases),
        "cases": [dataclasses.asdict(c) for c in cases],
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / EXTENSIONS_FILE).write_text(json.dumps(results, indent=2, allow_nan=True))
    save_contact_sheet(rows, config.out_dir / EXTENSIONS_SHEET, frames_per_clip=9)
    return results
