"""`hyv calibrate-cache`: fit a model's TeaCache polynomial from its own uncached trajectories.

For each prompt (the CLI passes the built-in grammar's training captions, never the held-out
combinations the benchmark judges: hyv.training.data.grammar.training_captions), one uncached
generation records per step after the first the pair (relative L1 change of the first block's
modulated input, relative L1 change of the block stack's output); `numpy.polyfit` of the output
change on the input change (degree 4, as TeaCache) gives the coefficients, stored in bundle.json as
`step_cache_coefficients`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyv.engine.bundle import load_bundle
from hyv.engine.bundle_spec import BUNDLE_FILE
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY, PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.step_cache.config import StepCacheConfig
from hyv.models import read_dit_metadata

logger = logging.getLogger(__name__)

DEGREE = 4
COEFFICIENTS_KEY = "step_cache_coefficients"


def open_pipeline(weights: str | Path, options: PipelineOptions, steps: int | None = None) -> VideoPipeline:
    """The bundle's pipeline; with `steps` other than a distilled schedule's, sampled on the flow
    schedule instead (a student run as a many-step model, for development)."""
    weights = Path(weights)
    bundle = load_bundle(weights, device="cpu", dtype=options.dtype)
    metadata = read_dit_metadata(weights / "dit")
    schedule = json.loads(metadata[SCHEDULE_METADATA_KEY]) if SCHEDULE_METADATA_KEY in metadata else None
    if schedule is not None and steps is not None and steps != len(schedule) - 1:
        logger.warning(
            "%s has a %d-step distilled schedule: sampling %d flow steps instead",
            weights,
            len(schedule) - 1,
            steps,
        )
        schedule = None
    return VideoPipeline(bundle, options, schedule)


def record_pairs(
    pipeline: VideoPipeline,
    prompts: Sequence[str],
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(N, 2): (modulated-input rel-L1, stack-output rel-L1) of every step after the first of every
    prompt's uncached generation at the model's default size."""
    pairs: list[tuple[float, float]] = []
    for index, prompt in enumerate(prompts):
        request = GenerationRequest(
            prompt=prompt, steps=steps, guidance=guidance, seed=seed + index, cache=StepCacheConfig()
        )
        with pipeline.step_cache.recording() as records:
            pipeline.generate(request)
        pairs += records
        logger.info("calibration trajectory %d/%d: %d steps", index + 1, len(prompts), len(records) + 1)
    return np.asarray(pairs, dtype=np.float64).reshape(-1, 2)


def fit_coefficients(pairs: np.ndarray, degree: int = DEGREE) -> list[float]:
    """numpy.polyfit of the output change on the input change (highest power first)."""
    finite = pairs[np.isfinite(pairs).all(axis=1)]
    if len(finite) <= degree:
        raise ValueError(
            f"need more than {degree} finite (input, output) pairs to fit degree {degree}, got {len(finite)}"
        )
    return [float(c) for c in np.polyfit(finite[:, 0], finite[:, 1], degree)]


def write_coefficients(bundle_dir: str | Path, coefficients: Sequence[float]) -> Path:
    """Store the coefficients in the bundle's bundle.json, keeping every other key as it is."""
    path = Path(bundle_dir) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {BUNDLE_FILE} in {bundle_dir}: only a bundle stores cache coefficients")
    raw: dict[str, Any] = json.loads(path.read_text())
    raw[COEFFICIENTS_KEY] = [float(c) for c in coefficients]
    path.write_text(json.dumps(raw, indent=2) + "\n")
    return path


def calibrate(
    weights: str | Path,
    prompts: Sequence[str],
    steps: int | None = None,
    guidance: float | None = None,
    true_cfg: bool | None = None,
    seed: int = 0,
    write: bool = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Fit the bundle's polynomial (and store it unless `write` is False); returns a report."""
    pipeline = open_pipeline(weights, PipelineOptions(device=device, dtype=dtype, true_cfg=true_cfg), steps)
    pairs = record_pairs(pipeline, prompts, steps, guidance, seed)
    coefficients = fit_coefficients(pairs)
    fitted = np.polyval(coefficients, pairs[:, 0])
    report: dict[str, Any] = {
        "weights": str(weights),
        "prompts": len(prompts),
        "steps": steps or pipeline.bundle.spec.limits.steps,
        "pairs": len(pairs),
        "coefficients": coefficients,
        "input_rel_l1_range": [float(pairs[:, 0].min()), float(pairs[:, 0].max())],
        "output_rel_l1_range": [float(pairs[:, 1].min()), float(pairs[:, 1].max())],
        "fit_mean_abs_error": float(np.abs(fitted - pairs[:, 1]).mean()),
        "written": None,
    }
    if write:
        report["written"] = str(write_coefficients(weights, coefficients))
    return report
