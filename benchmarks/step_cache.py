"""Step caching (hyv.engine.step_cache): speed against quality on a many-step model.

One run generates every held-out combination of the caption grammar (hyv.training.eval) with the
uncached pipeline and with each cache setting, clip by clip with the settings interleaved (load on
the machine drifts over a long run: each clip's settings share it). For each setting:

* speedup: the uncached run's total wall time over this setting's (whole pipeline: text encoding,
  denoising, VAE decode; the denoising share alone as `denoise_speedup`);
* block-stack evaluations computed / skipped;
* PSNR of the decoded frames (uint8, before H.264) against the uncached clip of the same seed;
* the judge's accuracy per attribute (color, shape, motion) and the points lost against uncached.

The FLOPs one skipped step saves on the 13B at 720p (1280x720, 129 frames) are counted on the meta
device (hyv.engine.step_cache.flops).

    python -m benchmarks.step_cache --weights weights/hyv-small-teacher          # the result
    python -m benchmarks.step_cache --quick                                         # a smoke run
    python -m benchmarks.step_cache --doc-from benchmarks/results/step_cache.json   # the doc only

Writes benchmarks/results/step_cache.json and the "Step caching" section of docs/benchmarks.md
(not with --quick).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import machine_description, update_benchmarks_doc
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import PipelineOptions, Progress
from hyv.engine.request import GenerationRequest
from hyv.engine.step_cache import StepCacheConfig
from hyv.engine.step_cache.calibrate import open_pipeline
from hyv.engine.step_cache.flops import skip_flops
from hyv.engine.video_io import video_to_uint8
from hyv.training.eval.metrics import psnr
from hyv.training.eval.runner import heldout_items, judge_clips

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/step_cache.json")
SECTION = "Step caching (benchmarks/step_cache.py)"
SETTINGS = (
    "teacache:0.05",
    "teacache:0.1",
    "teacache:0.2",
    "first_block:0.05",
    "first_block:0.1",
    "first_block:0.2",
)
ATTRIBUTES = ("color", "shape", "motion")
TARGET_SPEEDUP, MAX_POINTS_LOST = 1.6, 1.0


def parse_setting(text: str) -> StepCacheConfig:
    mode, _, threshold = text.partition(":")
    return StepCacheConfig(mode=mode, threshold=float(threshold) if threshold else None)  # type: ignore[arg-type]


def label(config: StepCacheConfig) -> str:
    return "off" if not config.enabled else f"{config.mode}:{config.threshold:g}"


def run(
    weights: Path,
    settings: list[StepCacheConfig],
    combinations: int | None,
    steps: int,
    true_cfg: bool | None,
    partial_out: Path | None = None,
) -> dict[str, Any]:
    """The whole comparison; with `partial_out`, the report so far is written there every few clips
    (a long run interrupted still leaves its measurements)."""
    pipeline = open_pipeline(weights, PipelineOptions(true_cfg=true_cfg), steps)
    limits = pipeline.bundle.spec.limits
    items = heldout_items(combinations, size=limits.width, height=limits.height)
    configs = [StepCacheConfig(), *settings]
    clips: dict[str, list[np.ndarray]] = {label(c): [] for c in configs}
    seconds = {label(c): 0.0 for c in configs}
    denoise_seconds = {label(c): 0.0 for c in configs}
    counts = {label(c): [0, 0] for c in configs}
    header = {
        "machine": machine_description(),
        "torch": torch.__version__,
        "weights": str(weights),
        "steps": steps,
        "size": f"{limits.width}x{limits.height}",
        "num_frames": limits.num_frames,
        "clips": len(items),
        "true_cfg": pipeline._true_cfg(),
        "coefficients": list(pipeline.step_cache.coefficients),
    }
    for index, item in enumerate(items):
        for config in configs:
            request = GenerationRequest(prompt=item.caption, steps=steps, seed=item.noise_seed, cache=config)
            stages: dict[str, float] = {}  # when each stage first reported: the denoise's bounds

            def note(progress: Progress, stages: dict[str, float] = stages) -> None:
                stages.setdefault(progress.stage, time.perf_counter())

            start = time.perf_counter()
            frames = [video_to_uint8(chunk[0]) for chunk in pipeline.frames(request, note)]
            seconds[label(config)] += time.perf_counter() - start
            denoise_seconds[label(config)] += stages["decode"] - stages["text_encode"]
            stats = pipeline.last_step_cache or {}
            counts[label(config)][0] += int(stats.get("computed", 0))  # type: ignore[call-overload]
            counts[label(config)][1] += int(stats.get("skipped", 0))  # type: ignore[call-overload]
            clips[label(config)].append(np.concatenate(frames))
        logger.info("clip %d/%d: %s", index + 1, len(items), item.caption)
        if partial_out is not None and (index + 1) % 4 == 0 and index + 1 < len(items):
            done = items[: index + 1]
            partial = {
                **header,
                "clips": len(done),
                "partial": True,
                "rows": _rows(configs, done, clips, seconds, denoise_seconds, counts),
            }
            partial_out.write_text(json.dumps(partial, indent=2) + "\n")
    return {**header, "rows": _rows(configs, items, clips, seconds, denoise_seconds, counts)}


def _rows(
    configs: list[StepCacheConfig],
    items: list[Any],
    clips: dict[str, list[np.ndarray]],
    seconds: dict[str, float],
    denoise_seconds: dict[str, float],
    counts: dict[str, list[int]],
) -> list[dict[str, Any]]:
    baseline = label(configs[0])
    judged = {name: judge_clips(videos, items)["accuracy"] for name, videos in clips.items()}
    rows = []
    for config in configs:
        name = label(config)
        psnrs = [psnr(a, b) for a, b in zip(clips[name], clips[baseline], strict=True)]
        finite = [p for p in psnrs if math.isfinite(p)]
        accuracy = {a: round(100 * judged[name][a], 1) for a in ATTRIBUTES}
        lost = {a: round(100 * (judged[baseline][a] - judged[name][a]), 1) for a in ATTRIBUTES}
        computed, skipped = counts[name]
        speedup = seconds[baseline] / seconds[name]
        rows.append(
            {
                "setting": name,
                "mode": config.mode,
                "threshold": config.threshold,
                "seconds": round(seconds[name], 2),
                "speedup": round(speedup, 3),
                "denoise_speedup": round(denoise_seconds[baseline] / denoise_seconds[name], 3),
                "computed": computed,
                "skipped": skipped,
                "skipped_share": round(skipped / max(1, computed + skipped), 3),
                "psnr_mean_db": round(float(np.mean(finite)), 2) if finite else math.inf,
                "psnr_min_db": round(min(psnrs), 2),
                "accuracy": accuracy,
                "points_lost": lost,
                "meets_target": speedup >= TARGET_SPEEDUP
                and all(v <= MAX_POINTS_LOST for v in lost.values()),
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    flops = report["flops_13b_720p"]
    lines = [f"{report['note']}\n"] if report.get("note") else []
    lines += [
        f"Machine: {report['machine']}; torch {report['torch']}. `python -m benchmarks.step_cache` on "
        f"`{report['weights']}`: {report['clips']} held-out combinations, {report['size']} x "
        f"{report['num_frames']} frames, {report['steps']} steps, "
        f"{'true CFG' if report['true_cfg'] else 'one branch'}, TeaCache "
        f"coefficients {[round(c, 4) for c in report['coefficients']]}. Speedup: whole-pipeline wall "
        "time of the uncached run over the setting's (the denoising stage alone in the next column), "
        "settings interleaved clip by clip; PSNR of the decoded frames against the uncached clip; "
        "judged accuracy in %, points lost against uncached in brackets. "
        f"Target: >= {TARGET_SPEEDUP}x with <= {MAX_POINTS_LOST:g} point lost per attribute.",
        "",
        "| setting | speedup | denoise speedup | skipped steps | PSNR mean (min) dB | color | shape | motion "
        "| target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        acc = [f"{r['accuracy'][a]:.1f} ({-r['points_lost'][a]:+.1f})" for a in ATTRIBUTES]
        lines.append(
            f"| {r['setting']} | {r['speedup']:.2f}x | {r.get('denoise_speedup', math.nan):.2f}x | "
            f"{r['skipped']}/{r['computed'] + r['skipped']} | "
            f"{r['psnr_mean_db']} ({r['psnr_min_db']}) | {' | '.join(acc)} | "
            f"{'yes' if r['meets_target'] else 'no'} |"
        )
    pflop = {k: flops[k] / 1e15 for k in ("step_flops", "saved_teacache", "saved_first_block")}
    lines += [
        "",
        f"On the 13B at {flops['width']}x{flops['height']}, {flops['frames']} frames "
        f"({flops['video_tokens']} video + {flops['text_tokens']} text tokens, meta device): one forward "
        f"is {pflop['step_flops']:.2f} PFLOP; a teacache skip saves {pflop['saved_teacache']:.2f} PFLOP "
        f"({100 * flops['saved_teacache_share']:.2f}%), a first-block skip "
        f"{pflop['saved_first_block']:.2f} PFLOP ({100 * flops['saved_first_block_share']:.2f}%) per "
        "forward (twice that per step with true CFG).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--combinations", type=int, default=None, help="held-out combinations (default: all 44)"
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="mode:threshold ...")
    parser.add_argument("--true-cfg", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--quick", action="store_true", help="2 combinations, 10 steps, 2 settings; no doc")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--note", default=None, help="a sentence put above the table (what the run is)")
    parser.add_argument(
        "--doc-from", type=Path, default=None, help="rewrite the doc section from this JSON report, no run"
    )
    args = parser.parse_args(argv)
    if args.doc_from is not None:
        report = json.loads(args.doc_from.read_text())
        if args.note is not None:
            report["note"] = args.note
        update_benchmarks_doc(SECTION, markdown(report))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    settings = [parse_setting(s) for s in args.settings]
    if args.quick:
        args.combinations, args.steps, settings = 2, 10, settings[:1] + settings[3:4]
    report = run(args.weights, settings, args.combinations, args.steps, args.true_cfg, args.out)
    report["flops_13b_720p"] = skip_flops().to_dict()
    report["quick"] = args.quick
    report["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    print(text)
    if not args.quick and not args.no_doc:
        update_benchmarks_doc(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
