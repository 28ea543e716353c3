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
    key: str
    label: str
    op: str  # ">=" or "<="
    limit: float
    unit: str
    value: Callable[[dict[str, Any]], float | None]


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("color", "Student color accuracy", ">=", 90.0, "%", lambda r: _percent(r, "color")),
    Threshold("motion", "Student motion accuracy", ">=", 85.0, "%", lambda r: _percent(r, "motion")),
    Threshold("shape", "Student shape accuracy", ">=", 80.0, "%", lambda r: _percent(r, "shape")),
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
    Threshold("i2v_psnr", "I2V first-frame PSNR", ">=", 25.0, "dB", lambda r: _get(r, "i2v", "psnr")),
)


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per acceptance threshold: value, limit, passed (None when not measured)."""
    rows = []
    for t in THRESHOLDS:
        value = t.value(results)
        slack = 1e-9  # accuracies are ratios of counts: 100 * 0.9 must not miss 90 by a rounding error
        passed = (
            None
            if value is None
            else (value >= t.limit - slack if t.op == ">=" else value <= t.limit + slack)
        )
        rows.append(
            {"key": t.key, "label": t.label, "value": value, "threshold": f"{t.op} {t.limit:g} {t.unit}",
             "passed": passed}
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
        f"at {limits.get('fps')} fps; up to {limits.get('max_width')}x{limits.get('max_height')} and "
        f"{limits.get('max_frames')} frames (sizes multiples of 16, frame counts 4n+1).",
        f"- Sampling as served: {_sampler_text(results.get('student'))}, flow shift "
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


def _eval_section(results: dict[str, Any]) -> list[str]:
    settings = results.get("settings", {})
    teacher, student = results.get("teacher"), results.get("student")
    gap = results.get("gap_points") or {}
    lines = [
        "## Evaluation",
        "",
        f"From `{results.get('command', 'hyv train eval')}` on {results.get('date', '?')} "
        f"({settings.get('device', '?')}, {settings.get('dtype', '?')}): "
        f"{settings.get('n_clips', '?')} clips "
        f"({len(settings.get('combinations_evaluated', []))} held-out combinations x "
        f"{settings.get('samples_per_combination', '?')}) at {settings.get('size')}x{settings.get('size')}, "
        f"{settings.get('num_frames')} frames, seed {settings.get('seed')}. The automatic judge reads color, "
        "shape, motion (centroid track, area) and background off the pixels.",
        "",
        f"| attribute | teacher ({_sampler_text(teacher)}) | student ({_sampler_text(student)}) | "
        "gap (points) |",
        "|---|---|---|---|",
    ]
    for key in ("color", "shape", "motion", "background", "all"):
        label = "all correct" if key == "all" else key
        lines.append(
            f"| {label} | {_pct(_get(results, 'teacher', 'accuracy', key))} | "
            f"{_pct(_get(results, 'student', 'accuracy', key))} | {_num(gap.get(key), '+.1f')} |"
        )
    truth = results.get("judge_ground_truth") or {}
    lines += [
        "",
        f"The judge on the rendered ground truth of the same clips: {_pct(truth.get('all'))} all correct.",
    ]
    vae = results.get("vae")
    if vae:
        tiling = vae.get("tiling", {})
        lines.append(
            "VAE reconstruction of the held-out clips: untiled PSNR "
            f"{_num(_get(vae, 'untiled', 'psnr'))} dB, "
            f"SSIM {_num(_get(vae, 'untiled', 'ssim'), '.4f')}; tiled ({tiling.get('sample_size')} px x "
            f"{tiling.get('sample_frames')} frame tiles, overlap {tiling.get('overlap')}) PSNR "
            f"{_num(_get(vae, 'tiled', 'psnr'))} dB, SSIM {_num(_get(vae, 'tiled', 'ssim'), '.4f')}."
        )
    i2v = results.get("i2v") or {}
    if "psnr" in i2v:
        lines.append(
            f"Image-to-video from each clip's first frame: first-frame PSNR {_num(i2v['psnr'])} dB (lowest "
            f"{_num(i2v.get('psnr_min'))}), SSIM {_num(i2v.get('ssim'), '.4f')}; all attributes correct "
            f"{_pct(_get(i2v, 'accuracy', 'all'))}."
        )
    elif "skipped" in i2v:
        lines.append(f"Image-to-video: skipped ({i2v['skipped']}).")
    walls = [f"total {_num(results.get('wall_s'), '.1f', ' s')}"]
    for role in ("teacher", "student"):
        run = results.get(role)
        if run:
            walls.append(
                f"{role} generation {_num(_get(run, 'wall_s', 'generate'), '.1f', ' s')} "
                f"({_num(run.get('seconds_per_clip'), '.2f', ' s')}/clip)"
            )
    for part in ("vae", "i2v"):
        if _get(results, part, "wall_s") is not None:
            walls.append(f"{part} {_num(_get(results, part, 'wall_s'), '.1f', ' s')}")
    lines += ["", f"Wall time: {', '.join(walls)}.", ""]
    return lines


def _acceptance_section(results: dict[str, Any]) -> list[str]:
    rows = results.get("thresholds") or check_thresholds(results)
    lines = ["## Acceptance", "", "| criterion | threshold | measured | result |", "|---|---|---|---|"]
    for row in rows:
        verdict = {True: "PASS", False: "**FAIL**", None: "not measured"}[row["passed"]]
        unit = row["threshold"].split()[-1]
        lines.append(
            f"| {row['label']} | {row['threshold']} | {_num(row['value'], '.1f', ' ' + unit)} | {verdict} |"
        )
    return [*lines, ""]


LIMITATIONS = """## Limitations

- It knows one synthetic world: a single flat-colored circle, square or triangle on a black or gray
  background, moving in a straight line, growing, shrinking or standing still. Prompts outside the
  caption grammar's vocabulary are refused by the tokenizer or give meaningless video.
- Small and low-resolution by design (trained on a 2-core CPU): expect soft edges, some color bleed
  and occasional wrong motions; sizes far from the training size degrade.
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
    bundle = _get(results, "student", "model") or describe_bundle(bundle_dir)
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
