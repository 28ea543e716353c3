"""The model card (``MODEL_CARD.md`` in a bundle) and the acceptance thresholds.

`write_model_card(bundle_dir, results)` renders what `evaluate_bundle` measured (the eval.json
dict) together with the bundle's own description (`describe_bundle`: configs, parameter counts
read from the safetensors headers, sizes on disk, the distilled schedule) and the training recipe.

The recipe is ``<bundle>/recipe.json``, written by the training pipeline. Expected keys (all
optional; anything else is listed as-is):

    {
      "command": "make weights",            # the one command that reproduces the bundle
      "seed": 0,                            # the global seed
      "hardware": "2-core CPU, no GPU",     # where it was trained
      "total_wall_time_s": 6900.0,          # else: the sum over the stages
      "git_commit": "0123abc",
      "data": "synthetic grammar clips, 64x64x17, video:image 4:1",   # str or {key: value}
      "stages": [                           # in order (a {name: {...}} mapping works too)
        {"name": "vae", "command": "hyv train vae ...", "steps": 3000, "wall_time_s": 1500.0,
         ...any other key (batch_size, lr, size, notes) goes to the stage's "details" column}
      ],
      "config": {...}                       # the pipeline's own config: recorded, not shown
    }

Dict-valued stage keys (a stage's full settings) are recorded but left out of the card.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyv.training.data import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    all_combinations,
    caption,
    heldout_combinations,
)
from hyv.training.data.buckets import parse_bucket

logger = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
RECIPE_FILE = "recipe.json"
COMPONENTS = ("dit", "vae", "text_encoder")


# --- acceptance thresholds ----------------------------------------------------------------------


def _get(results: dict[str, Any], *keys: str) -> Any:
    value: Any = results
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _percent(results: dict[str, Any], attribute: str) -> float | None:
    value = _get(results, "student", "accuracy", attribute)
    return None if value is None else 100.0 * value


def _worst_gap(results: dict[str, Any]) -> float | None:
    gaps = results.get("gap_points")
    if not gaps:
        return None
    return max((gaps[k] for k in ("color", "shape", "motion") if gaps.get(k) is not None), default=None)


@dataclass(frozen=True)
class Threshold:
    """One acceptance criterion, checked at every bucket (``video_only``: at video buckets);
    ``value`` reads it off a bucket's section of eval.json."""

    key: str
    label: str
    op: str  # ">=" or "<="
    limit: float
    unit: str
    value: Callable[[dict[str, Any]], float | None]
    video_only: bool = False
    fmt: str = ".1f"

    @property
    def text(self) -> str:
        return f"{self.op} {self.limit:g}" + (f" {self.unit}" if self.unit else "")


# Issue 23's acceptance, per bucket (64x64, 96x64, 64x96, 128x128; 17 and 33 frames).
THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("color", "Student color accuracy", ">=", 95.0, "%", lambda r: _percent(r, "color")),
    Threshold("shape", "Student shape accuracy", ">=", 90.0, "%", lambda r: _percent(r, "shape")),
    Threshold(
        "motion", "Student motion accuracy", ">=", 90.0, "%", lambda r: _percent(r, "motion"), video_only=True
    ),
    Threshold(
        "iou",
        "Student shape IoU with the best-fitting ideal shape (mean)",
        ">=",
        0.85,
        "",
        lambda r: _get(r, "student", "accuracy", "iou"),
        fmt=".3f",
    ),
    Threshold(
        "clean",
        "Student clean frames (no stray component > 1% of the frame)",
        ">=",
        95.0,
        "%",
        lambda r: _percent(r, "clean"),
    ),
    Threshold(
        "teacher_gap",
        "Student within 3 points of the teacher (largest shortfall over color, shape, motion)",
        "<=",
        3.0,
        "points",
        _worst_gap,
    ),
    Threshold(
        "vae_psnr",
        "VAE PSNR on held-out clips (untiled)",
        ">=",
        32.0,
        "dB",
        lambda r: _get(r, "vae", "untiled", "psnr"),
    ),
    Threshold(
        "i2v_psnr",
        "I2V first-frame PSNR",
        ">=",
        30.0,
        "dB",
        lambda r: _get(r, "i2v", "psnr"),
        video_only=True,
    ),
)


def bucket_sections(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-bucket sections of an eval.json; one made of the top level for a file written before
    buckets (its size x size x num_frames)."""
    if results.get("buckets"):
        return list(results["buckets"])
    settings = results.get("settings", {})
    size, frames = settings.get("size"), settings.get("num_frames")
    name = f"{size}x{size}x{frames}" if size and frames else "all"
    return [{**results, "bucket": name, "frames": frames}]


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per bucket and acceptance threshold: bucket, key, label, value, threshold, passed
    (None when not measured); video-only criteria are not checked at image buckets."""
    rows = []
    for section in bucket_sections(results):
        for t in THRESHOLDS:
            if t.video_only and section.get("frames") == 1:
                continue
            value = t.value(section)
            slack = 1e-9  # accuracies are ratios of counts: 100 * 0.9 must not miss 90 by a rounding error
            passed = (
                None
                if value is None
                else (value >= t.limit - slack if t.op == ">=" else value <= t.limit + slack)
            )
            rows.append(
                {"bucket": section.get("bucket"), "key": t.key, "label": t.label, "value": value,
                 "threshold": t.text, "passed": passed}
            )  # fmt: skip
    return rows


# --- describing a bundle ------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _count_parameters(directory: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def describe_bundle(directory: str | Path) -> dict[str, Any]:
    """Configs, parameter counts, bytes on disk and the distilled schedule, without loading weights."""
    directory = Path(directory)
    out: dict[str, Any] = {"spec": _read_json(directory / "bundle.json")}
    for name in COMPONENTS:
        sub = directory / name
        if not sub.is_dir():
            continue
        config = {k: v for k, v in _read_json(sub / "config.json").items() if not k.startswith("_")}
        size = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file())
        out[name] = {"config": config, "parameters": _count_parameters(sub), "bytes": size}
    out["bytes"] = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    if (directory / "dit").is_dir():
        from hyv.engine.pipeline import SCHEDULE_METADATA_KEY
        from hyv.models import read_dit_metadata

        try:
            metadata = read_dit_metadata(directory / "dit")
        except Exception as exc:
            logger.warning("could not read the DiT metadata of %s: %s", directory, exc)
            metadata = {}
        if SCHEDULE_METADATA_KEY in metadata:
            out["schedule"] = json.loads(metadata[SCHEDULE_METADATA_KEY])
    return out


def _millions(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} M"


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MB"


def _architecture(name: str, config: dict[str, Any]) -> str:
    c = config
    if name == "dit":
        cond = "33-channel latent_concat (T2V + I2V)" if c.get("image_condition") else "T2V only"
        guidance = "guidance embedding" if c.get("guidance_embed") else "no guidance embedding (true CFG)"
        return (
            f"HunyuanVideo DiT: hidden {c.get('hidden_size')}, {c.get('num_heads')} heads, "
            f"{c.get('depth_double')} dual-stream + {c.get('depth_single')} single-stream blocks, "
            f"patch {'x'.join(map(str, c.get('patch_size', [])))}, 3D RoPE {c.get('rope_axes_dim')}, "
            f"token refiner depth {c.get('refiner_depth')}, {cond}, {guidance}"
        )
    if name == "vae":
        return (
            f"3D causal VAE ({c.get('temporal_compression_ratio', 4)}x time, "
            f"{c.get('spatial_compression_ratio', 8)}x{c.get('spatial_compression_ratio', 8)} space, "
            f"{c.get('latent_channels', 16)} latent channels), channels {c.get('block_out_channels')}, "
            f"{c.get('layers_per_block')} layer(s) per block"
            + (
                "; the DiT sees its latents standardized per channel"
                if c.get("latents_mean") is not None
                else f"; latent scaling factor {c.get('scaling_factor', 0.0):.4f}"
            )
        )
    return (
        f"built-in word-level transformer: dim {c.get('dim')}, {c.get('num_layers')} layers, "
        f"{c.get('num_heads')} heads, vocabulary {c.get('vocab_size')} words, "
        f"max {c.get('max_length')} tokens"
    )


# --- rendering -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _num(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def _sampler_text(run: dict[str, Any] | None) -> str:
    if run is None:
        return "not evaluated"
    s = run["sampler"]
    how = {"true_cfg": f"true CFG {s['guidance']:g}", "embedded": f"embedded guidance {s['guidance']:g}"}
    return f"{s['steps']} steps, {how.get(s['mode'], 'no guidance')}"


def _model_section(results: dict[str, Any], bundle: dict[str, Any]) -> list[str]:
    spec, limits = bundle.get("spec", {}), bundle.get("spec", {}).get("limits", {})
    lines = ["## Model", "", "| component | architecture | parameters | on disk |", "|---|---|---|---|"]
    for name in COMPONENTS:
        if name in bundle:
            part = bundle[name]
            lines.append(
                f"| {name} | {_architecture(name, part['config'])} | {_millions(part['parameters'])} | "
                f"{_mb(part['bytes'])} |"
            )
    total = sum(bundle[n]["parameters"] or 0 for n in COMPONENTS if n in bundle)
    lines += [
        f"| **total** | | **{_millions(total)}** | **{_mb(bundle.get('bytes'))}** |",
        "",
        f"- Bundle `{spec.get('name', '?')}` (presets: DiT `{spec.get('dit_preset')}`, VAE "
        f"`{spec.get('vae_preset')}`, text encoder `{spec.get('text_encoder_preset')}`); trained: "
        f"{spec.get('trained', False)}.",
        f"- Default output {limits.get('width')}x{limits.get('height')}, {limits.get('num_frames')} frames "
        f"at {limits.get('fps')} fps; "
        + (
            "sizes (width x height) "
            + ", ".join(f"{w}x{h}" for w, h in limits["buckets"])
            + (
                f", frame counts {', '.join(map(str, limits['frame_counts']))}"
                if limits.get("frame_counts")
                else ""
            )
            + "."
            if limits.get("buckets")
            else f"up to {limits.get('max_width')}x{limits.get('max_height')} and {limits.get('max_frames')} "
            "frames (sizes multiples of 16, frame counts 4n+1)."
        ),
        f"- Sampling as served: {_sampler_text(bucket_sections(results)[0].get('student'))}, flow shift "
        f"{limits.get('flow_shift')}."
        + (f" Distilled schedule (sigmas): {bundle['schedule']}." if "schedule" in bundle else ""),
        "",
    ]
    return lines


def _data_section(recipe: dict[str, Any]) -> list[str]:
    held = heldout_combinations()
    lines = [
        "## Training data",
        "",
        "Procedurally rendered clips (`hyv/training/data`): one flat-colored anti-aliased shape on a flat "
        "background, with random position, size, travel distance and growth factor; captions exactly "
        "`a {color} {shape} {motion} on a {background} background`.",
        "",
        f"- colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; backgrounds: {', '.join(BACKGROUNDS)};",
        f"- motions: {', '.join(MOTIONS)}.",
        f"- {len(all_combinations())} combinations; {len(held)} (15%) are held out of training, chosen so "
        "that every attribute value and every pair of values still appears in training. Images "
        "(1-frame clips) and videos are mixed 1:4.",
        "",
        "<details><summary>The held-out combinations</summary>",
        "",
        *(f"- {caption(a)}" for a in held),
        "",
        "</details>",
        "",
    ]
    data = recipe.get("data")
    if isinstance(data, dict):
        lines += [f"- {k}: {v}" for k, v in data.items()]
    elif data:
        lines.append(f"- {data}")
    return [*lines, ""]


def _recipe_section(recipe: dict[str, Any]) -> list[str]:
    lines = ["## Training recipe", ""]
    if not recipe:
        return [*lines, f"No `{RECIPE_FILE}` in the bundle: the training recipe was not recorded.", ""]
    stages = recipe.get("stages", [])
    if isinstance(stages, dict):
        stages = [{"name": k, **v} for k, v in stages.items()]
    total = recipe.get("total_wall_time_s")
    if total is None and stages:
        total = sum(float(s.get("wall_time_s") or 0.0) for s in stages)
    known = {"command", "seed", "hardware", "total_wall_time_s", "git_commit", "data", "stages", "config"}
    lines += [
        f"- Command: `{recipe.get('command', '?')}`",
        f"- Seed: {recipe.get('seed', '?')}; hardware: {recipe.get('hardware', '?')}; "
        f"git commit: {recipe.get('git_commit', '?')}",
        f"- Total wall time: {_num(None if total is None else total / 60.0, '.1f', ' min')}",
        *(f"- {k}: {v}" for k, v in recipe.items() if k not in known),
    ]
    if stages:
        lines += ["", "| stage | steps | wall time | command | details |", "|---|---|---|---|---|"]
        for s in stages:
            wall = s.get("wall_time_s")
            command = f"`{s['command']}`" if s.get("command") else "-"
            details = ", ".join(
                f"{k}={v}"
                for k, v in s.items()
                if k not in {"name", "steps", "wall_time_s", "command"} and not isinstance(v, dict)
            )
            lines.append(
                f"| {s.get('name', '?')} | {s.get('steps', '?')} | "
                f"{_num(None if wall is None else wall / 60.0, '.1f', ' min')} | "
                f"{command} | {details} |"
            )
    return [*lines, ""]


def _cell(section: dict[str, Any], key: str, teacher: bool, render: Callable[[float | None], str]) -> str:
    """A per-bucket table cell: the student's value, then " / " the teacher's when there is one."""
    student = render(_get(section, "student", "accuracy", key))
    return f"{student} / {render(_get(section, 'teacher', 'accuracy', key))}" if teacher else student


def _iou(value: float | None) -> str:
    return _num(value, ".3f")


def _bucket_table(results: dict[str, Any]) -> list[str]:
    """Rows = buckets; columns = every metric (student / teacher where a teacher was evaluated)."""
    sections = bucket_sections(results)
    teacher = any(s.get("teacher") for s in sections)
    lines = [
        "| bucket | clips | color | shape | motion | shape IoU | clean frames | one object | "
        "gap to teacher (points) | VAE PSNR untiled / tiled | I2V first-frame PSNR (lowest) | "
        "s/clip | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sections:
        image = s.get("frames") == 1
        i2v = s.get("i2v") or {}
        i2v_text = (
            f"{_num(i2v['psnr'], '.2f', ' dB')} ({_num(i2v.get('psnr_min'), '.1f')})"
            if "psnr" in i2v
            else ("-" if image or "skipped" in i2v else "n/a")
        )
        vae = s.get("vae")
        vae_text = (
            f"{_num(_get(vae, 'untiled', 'psnr'))} / {_num(_get(vae, 'tiled', 'psnr'))} dB" if vae else "n/a"
        )
        lines.append(
            f"| {s.get('bucket')} | {s.get('n_clips', _get(s, 'student', 'accuracy', 'n'))} | "
            f"{_cell(s, 'color', teacher, _pct)} | {_cell(s, 'shape', teacher, _pct)} | "
            f"{'-' if image else _cell(s, 'motion', teacher, _pct)} | {_cell(s, 'iou', teacher, _iou)} | "
            f"{_cell(s, 'clean', teacher, _pct)} | {_cell(s, 'one_object', teacher, _pct)} | "
            f"{_num(_worst_gap(s), '+.1f')} | {vae_text} | {i2v_text} | "
            f"{_num(_get(s, 'student', 'seconds_per_clip'), '.2f', ' s')} | "
            f"{_num(s.get('wall_s'), '.0f', ' s')} |"
        )
    return lines


def _reused_teacher_note(sections: list[dict[str, Any]]) -> list[str]:
    """Where the teacher's results were carried over from an earlier evaluation, and the check."""
    reused = [s for s in sections if (s.get("teacher") or {}).get("reused_from")]
    checks = [s for s in sections if (s.get("teacher") or {}).get("reproduces")]
    if not reused:
        return []
    source = reused[0]["teacher"]["reused_from"]
    note = (
        f"The teacher's results at {', '.join(str(s['bucket']) for s in reused)} come from `{source}`, "
        "an earlier evaluation of the same teacher on the same clips (`--teacher-results`)"
    )
    if checks:
        check = checks[0]
        worst = check["teacher"]["reproduces"]["largest_difference"]
        note += (
            f"; the teacher was regenerated at {check['bucket']} and reproduced every clip's judgement "
            f"(IoU within {worst['iou']:.1e}, clean frames within {worst['clean']:.1e})"
        )
    return ["", note + "."]


def _eval_section(results: dict[str, Any]) -> list[str]:
    settings = results.get("settings", {})
    sections = bucket_sections(results)
    first = sections[0]
    teacher, student = first.get("teacher"), first.get("student")
    has_teacher = any(s.get("teacher") for s in sections)
    pooled_student = _get(results, "student", "accuracy") or {}  # every bucket's clips together
    pooled_teacher = _get(results, "teacher", "accuracy") or {}
    gap = results.get("gap_points") or {}
    names = ", ".join(str(s.get("bucket")) for s in sections)
    lines = [
        "## Evaluation",
        "",
        f"From `{results.get('command', 'hyv train eval')}` on {results.get('date', '?')} "
        f"({settings.get('device', '?')}, {settings.get('dtype', '?')}): at each bucket (width x height x "
        f"frames: {names}) {settings.get('n_clips', '?')} clips "
        f"({len(settings.get('combinations_evaluated', []))} held-out combinations x "
        f"{settings.get('samples_per_combination', '?')}), seed {settings.get('seed')}. The automatic judge "
        "reads color, shape, motion (centroid track, area) and background off the pixels, and measures the "
        "shape IoU (each frame's object against the best-fitting ideal shape of the judged kind; 0 for a "
        "frame without the object), clean frames (no stray component larger than 1% of the frame besides "
        "the object) and frames with exactly one object.",
        "",
        f"Student: {_sampler_text(student)}"
        + (f"; teacher: {_sampler_text(teacher)}. Cells read student / teacher." if has_teacher else "."),
        *_reused_teacher_note(sections),
        "",
        *_bucket_table(results),
        "",
        "Over every bucket:",
        "",
        f"| metric | teacher ({_sampler_text(teacher)}) | student ({_sampler_text(student)}) | "
        "gap (points) |",
        "|---|---|---|---|",
    ]
    for key, label, render in (
        ("color", "color", _pct),
        ("shape", "shape", _pct),
        ("motion", "motion", _pct),
        ("background", "background", _pct),
        ("all", "all correct", _pct),
        ("iou", "shape IoU", _iou),
        ("clean", "clean frames", _pct),
        ("one_object", "one object per frame", _pct),
    ):
        lines.append(
            f"| {label} | {render(pooled_teacher.get(key))} | {render(pooled_student.get(key))} | "
            f"{_num(gap.get(key), '+.1f')} |"
        )
    truths = [s.get("judge_ground_truth") or {} for s in sections]
    worst_all = min((t["all"] for t in truths if t.get("all") is not None), default=None)
    worst_iou = min((t["iou"] for t in truths if t.get("iou") is not None), default=None)
    worst_clean = min((t["clean"] for t in truths if t.get("clean") is not None), default=None)
    lines += [
        "",
        f"The judge on the rendered ground truth of the same clips, at the worst bucket: {_pct(worst_all)} "
        f"all correct, shape IoU {_iou(worst_iou)}, {_pct(worst_clean)} clean frames.",
    ]
    tilings = {
        str(s.get("bucket")): _get(s, "vae", "tiling")
        for s in sections
        if _get(s, "vae", "tiling") is not None
    }
    if tilings:
        bucket, tiling = next(iter(tilings.items()))
        lines.append(
            "VAE: reconstruction of the held-out ground truth (posterior mode), untiled and tiled with the "
            f"largest tiles that split every dimension ({tiling.get('sample_size')} px x "
            f"{tiling.get('sample_frames')} frame tiles at {bucket}, overlap {tiling.get('overlap')})."
        )
    if any("psnr" in (s.get("i2v") or {}) for s in sections):
        lines.append(
            "I2V: the student generates from each clip's first ground-truth frame and its caption; PSNR of "
            "the generated first frame against that image."
        )
    skipped = {
        str(_get(s, "i2v", "skipped")) for s in sections if s.get("frames") != 1 and _get(s, "i2v", "skipped")
    }
    lines += [f"Image-to-video: skipped ({why})." for why in sorted(skipped)]
    lines += ["", f"Wall time: total {_num(results.get('wall_s'), '.1f', ' s')}.", ""]
    return lines


def _is_image(row: dict[str, Any]) -> bool | None:
    """Whether a threshold row's bucket is an image bucket; None when the row names no bucket."""
    return parse_bucket(str(row["bucket"])).is_image if row.get("bucket") else None


def _verdict(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """PASS or FAIL (bold) of these threshold rows, with the failed checks by criterion and bucket."""
    failed = [r for r in rows if r["passed"] is False]
    unmeasured = [r for r in rows if r["passed"] is None]
    if failed:
        by_key = {key: [str(r.get("bucket")) for r in failed if r["key"] == key] for key in keys}
        return (
            f"FAIL** ({len(failed)} of {len(rows)} checks failed: "
            + "; ".join(f"{key} at {', '.join(where)}" for key, where in by_key.items() if where)
            + ")."
        )
    return f"PASS** (all {len(rows) - len(unmeasured)} measured checks passed" + (
        f"; {len(unmeasured)} not measured)." if unmeasured else ")."
    )


def _acceptance_section(results: dict[str, Any]) -> list[str]:
    """A matrix: rows = buckets, columns = criteria (THRESHOLDS), cells value and PASS/FAIL; then
    the criteria in words and the overall verdict."""
    rows = results.get("thresholds") or check_thresholds(results)
    known = {t.key: t for t in THRESHOLDS}
    keys = [t.key for t in THRESHOLDS if any(r["key"] == t.key for r in rows)]
    keys += [k for k in dict.fromkeys(r["key"] for r in rows) if k not in keys]
    buckets = list(dict.fromkeys(str(r.get("bucket")) for r in rows))
    header = [f"{k} {known[k].text}" if k in known else k for k in keys]
    lines = [
        "## Acceptance",
        "",
        "| bucket | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for bucket in buckets:
        cells = []
        for key in keys:
            row = next((r for r in rows if str(r.get("bucket")) == bucket and r["key"] == key), None)
            if row is None:
                cells.append("-")
                continue
            fmt = known[key].fmt if key in known else ".1f"
            unit = known[key].unit if key in known else ""
            value = _num(row["value"], fmt, f" {unit}" if unit else "")
            verdict = {True: "PASS", False: "**FAIL**", None: "not measured"}[row["passed"]]
            cells.append(f"{value} {verdict}" if row["value"] is not None else verdict)
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    lines += ["", "Criteria, at every bucket (motion and I2V at video buckets only):", ""]
    lines += [f"- {k}: {known[k].label} {known[k].text}" for k in keys if k in known]
    verdict = f"**Overall: {_verdict(rows, keys)}"
    by_kind = {
        "video": [r for r in rows if _is_image(r) is False],
        "image": [r for r in rows if _is_image(r)],
    }
    if all(by_kind.values()):  # the video buckets' verdict apart from the images'
        for kind, group in by_kind.items():
            where = ", ".join(dict.fromkeys(str(r["bucket"]) for r in group))
            verdict += f"\n- at the {kind} buckets ({where}): **{_verdict(group, keys)}"
    return [*lines, "", verdict, ""]


LIMITATIONS = """## Limitations

- It knows one synthetic world: a single flat-colored circle, square or triangle on a black or gray
  background, moving in a straight line, growing, shrinking or standing still. Prompts outside the
  caption grammar's vocabulary are refused with an error naming the unknown words; prompts in its
  vocabulary but outside the grammar give meaningless video.
- Small and low-resolution by design (trained on a 2-core CPU): expect soft edges, some color bleed
  and occasional wrong motions. Only the buckets in the evaluation above are measured.
- The accuracies are measured by an automatic pixel judge on the held-out combinations, with the
  number of clips given above; it is exact on rendered ground truth but can be fooled by artifacts
  (e.g. two blobs).
- Not suitable for any real-world content; no safety filtering is needed or provided.
"""


def render_model_card(
    bundle_dir: str | Path, results: dict[str, Any], recipe: dict[str, Any] | None = None
) -> str:
    """The card's Markdown; ``recipe`` None reads ``<bundle_dir>/recipe.json`` if present."""
    bundle_dir = Path(bundle_dir)
    if recipe is None:
        recipe = _read_json(bundle_dir / RECIPE_FILE)
    bundle = (
        _get(results, "models", "student") or _get(results, "student", "model") or describe_bundle(bundle_dir)
    )
    name = bundle.get("spec", {}).get("name", bundle_dir.name)
    reproduce = recipe.get("command", "# no recipe.json: see the README's training section")
    trained = bundle.get("spec", {}).get("trained", False)
    lines = [
        f"# {name}: model card",
        "",
        "A small HunyuanVideo-architecture text-to-video and image-to-video model (DiT + 3D causal VAE + "
        "built-in text encoder), trained in this repository on synthetic clips with the paper's recipe "
        "(VAE, flow-matching DiT, CFG distillation, step distillation). Numbers below come from "
        "`hyv train eval`.",
        "",
        *([] if trained else ["**This bundle holds untrained (random) weights.**", ""]),
        *_model_section(results, bundle),
        *_data_section(recipe),
        *_recipe_section(recipe),
        *_eval_section(results),
        *_acceptance_section(results),
        LIMITATIONS,
        "## How to reproduce",
        "",
        "```bash",
        f"{reproduce}" if reproduce.startswith("#") else f"{reproduce}    # train (resumable)",
        f"{results.get('command', 'hyv train eval')}    # evaluate and rewrite this card",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    bundle_dir: str | Path, results: dict[str, Any], recipe: dict[str, Any] | None = None
) -> Path:
    """Write ``MODEL_CARD.md`` into the bundle directory; returns its path."""
    path = Path(bundle_dir) / CARD_FILE
    path.write_text(render_model_card(bundle_dir, results, recipe))
    logger.info("model card written to %s", path)
    return path
