"""`hyv train lora-eval`: does an adapter teach its motion, and does it leave the rest alone?

On the held-out bouncing combinations (`bouncing_heldout_combinations`: 5 colour/shape pairs on
both backgrounds, never trained on), `samples_per_combination` clips each, at the bundle's default
size (64x64x17) and sampling (hyv.training.eval.sampling, as `hyv generate` runs it):

* the base model (no adapter), and the adapter read and merged into the DiT at each scale the way
  a served request's adapter is (hyv.engine.lora_formats.read_lora_file,
  hyv.engine.lora.applied_loras): the fraction of clips the judge reads as bouncing, and its
  colour / shape / background accuracy;
* at scale 0 the videos must be bit-identical to the base model's (`scale0_identical`), and the
  base model's weights are back after every merge (`base_untouched`: its videos, generated again
  after the merges, equal the first ones);
* optionally (`other_motions`) the base model's 44 held-out grammar captions with and without the
  adapter at scale 1.0: the judged accuracy of each attribute, i.e. whether the adapter disturbs the
  motions it was not trained for.

Item j of a clip list is generated from noise seed `noise_seed(seed, j)`, the same for every model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyv.engine.lora import applied_loras
from hyv.engine.lora_formats import LoraTargets, read_lora_file
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.training.data.grammar import (
    BOUNCING,
    Attributes,
    bouncing_heldout_combinations,
    caption,
    heldout_combinations,
)
from hyv.training.eval.judge import judge_clip
from hyv.training.eval.runner import noise_seed
from hyv.training.eval.sampling import generate_clips, served_sampler

logger = logging.getLogger(__name__)

MIN_BOUNCING = 0.8  # the demonstration adapter's bar: held-out bouncing prompts judged bouncing


@dataclass(frozen=True)
class LoRAEvalConfig:
    base: Path
    adapter: Path
    out: Path | None = None  # the JSON report; None: not written
    scales: tuple[float, ...] = (0.0, 1.0)
    samples_per_combination: int = 3
    seed: int = 0
    batch_size: int = 10
    other_motions: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.samples_per_combination < 1:
            raise ValueError(f"samples_per_combination must be >= 1, got {self.samples_per_combination}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.scales:
            raise ValueError("scales must name at least one adapter scale")
        for scale in self.scales:
            if not math.isfinite(scale):
                raise ValueError(f"adapter scales must be finite, got {scale!r}")


def generate(pipeline: VideoPipeline, prompts: Sequence[str], seed: int, batch_size: int) -> list[np.ndarray]:
    limits = pipeline.bundle.spec.limits
    size, frames = limits.width, limits.num_frames
    sampler = served_sampler(pipeline, size, frames, limits.height)
    seeds = [noise_seed(seed, j) for j in range(len(prompts))]
    return generate_clips(pipeline, sampler, prompts, seeds, size, frames, batch_size, height=limits.height)


def judge_all(clips: Sequence[np.ndarray], expected: Sequence[Attributes]) -> dict[str, Any]:
    """Accuracy per attribute, the bouncing fraction and the judged motions' counts."""
    judged = [judge_clip(clip) for clip in clips]
    n = len(judged)
    out: dict[str, Any] = {
        key: sum(getattr(j, key) == getattr(want, key) for j, want in zip(judged, expected, strict=True)) / n
        for key in ("color", "shape", "motion", "background")
    }
    out["bouncing"] = sum(j.motion == BOUNCING for j in judged) / n
    out["motions"] = dict(Counter(str(j.motion) for j in judged).most_common())
    out["n"] = n
    return out


def evaluate_adapter(config: LoRAEvalConfig) -> dict[str, Any]:
    """The report described in the module docstring (also written to `config.out`)."""
    started = time.monotonic()
    pipeline = VideoPipeline.from_dir(config.base, PipelineOptions(device=config.device, dtype=torch.float32))
    adapter = read_lora_file(config.adapter, LoraTargets.of(pipeline.dit))
    combos = bouncing_heldout_combinations()
    expected = [a for _ in range(config.samples_per_combination) for a in combos]
    prompts = [caption(a) for a in expected]
    base_clips = generate(pipeline, prompts, config.seed, config.batch_size)
    report: dict[str, Any] = {
        "base": str(config.base),
        "adapter": str(config.adapter),
        "adapter_metadata": adapter.metadata,
        "heldout_pairs": sorted({f"{a.color} {a.shape}" for a in combos}),
        "samples_per_combination": config.samples_per_combination,
        "seed": config.seed,
        "without_adapter": judge_all(base_clips, expected),
        "scales": {},
    }
    for scale in config.scales:
        with applied_loras(pipeline.dit, [(adapter, scale)]):
            clips = generate(pipeline, prompts, config.seed, config.batch_size)
        entry = judge_all(clips, expected)
        entry["identical_to_base"] = all(np.array_equal(a, b) for a, b in zip(clips, base_clips, strict=True))
        report["scales"][repr(scale)] = entry
        logger.info("scale %g: %.1f%% judged bouncing", scale, 100 * entry["bouncing"])
    if 0.0 in config.scales:
        report["scale0_identical"] = report["scales"][repr(0.0)]["identical_to_base"]
    again = generate(pipeline, prompts, config.seed, config.batch_size)
    report["base_untouched"] = all(np.array_equal(a, b) for a, b in zip(again, base_clips, strict=True))
    if config.other_motions:
        grammar = heldout_combinations()
        grammar_prompts = [caption(a) for a in grammar]
        without = generate(pipeline, grammar_prompts, config.seed, config.batch_size)
        with applied_loras(pipeline.dit, [(adapter, 1.0)]):
            adapted = generate(pipeline, grammar_prompts, config.seed, config.batch_size)
        report["other_motions"] = {
            "without_adapter": judge_all(without, grammar),
            "with_adapter": judge_all(adapted, grammar),
        }
    top = report["scales"].get(repr(1.0))
    report["passed"] = top is not None and top["bouncing"] >= MIN_BOUNCING
    report["seconds"] = round(time.monotonic() - started, 1)
    if config.out is not None:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        config.out.write_text(json.dumps(report, indent=2) + "\n")
    return report
