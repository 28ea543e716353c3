"""`hyv train eval`: the typer command over `evaluate_bundle`.

Registered in hyv/training/cli.py as ``train_app.command("eval")(eval_command)``. Progress bars and
messages go to stderr; stdout gets one JSON line (the headline numbers and the output paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hyv.engine.bundle import DEFAULT_BUNDLE_DIR
from hyv.training.eval.extensions import ExtensionConfig
from hyv.training.eval.retention import RetentionConfig
from hyv.training.eval.runner import EvalConfig

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line
# The options' defaults are the configs' (one place for each).
_EVAL = EvalConfig(student=DEFAULT_BUNDLE_DIR)
_RETENTION = RetentionConfig(bundle=DEFAULT_BUNDLE_DIR)
_EXTENSIONS = ExtensionConfig(bundle=DEFAULT_BUNDLE_DIR)
_RETENTION_SIGMAS = ",".join(f"{sigma:g}" for sigma in _RETENTION.sigmas)

Combinations = Annotated[int, typer.Option(help="Held-out combinations to use, spread evenly (0: all 44).")]
BatchSize = Annotated[int, typer.Option(help="Clips per batched generation.")]
Device = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")]


def exit_on_invalid_bundle(exc: Exception) -> typer.Exit:
    """Print why a bundle cannot be opened; the caller raises the returned exit (status 2)."""
    console.print(f"[red]{exc}[/]")
    return typer.Exit(2)


def eval_command(
    student: Annotated[
        Path, typer.Option(help="Bundle to evaluate (served with its own steps and guidance); gets the card.")
    ] = DEFAULT_BUNDLE_DIR,
    teacher: Annotated[
        Path | None, typer.Option(help="Teacher bundle (sampled with --teacher-steps and true CFG).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Directory for eval.json and the contact sheets.")
    ] = _EVAL.out_dir,
    buckets: Annotated[
        str,
        typer.Option(
            help="Buckets to evaluate, WIDTHxHEIGHTxFRAMES comma-separated (frames 1: images), e.g. "
            "64x64x17,96x64x17,64x96x33. Default: the student bundle.json's buckets, else --size/--frames."
        ),
    ] = "",
    size: Annotated[
        int | None,
        typer.Option(
            help="Square size in pixels (multiple of 16): evaluate size x size x --frames instead of the "
            "bundle's buckets; with --buckets, the size --batch-size refers to. [default: 64]"
        ),
    ] = None,
    frames: Annotated[
        int | None, typer.Option(help="Frames per clip (4n+1, >= 5), as --size. [default: 17]")
    ] = None,
    samples_per_combination: Annotated[
        int, typer.Option(help="Clips per held-out combination.")
    ] = _EVAL.samples_per_combination,
    combinations: Combinations = 0,
    seed: Annotated[int, typer.Option(help="Seed of the clip geometry and the noise.")] = _EVAL.seed,
    batch_size: Annotated[
        int,
        typer.Option(help="Clips per batched generation at --size/--frames; fewer at larger buckets."),
    ] = _EVAL.batch_size,
    teacher_steps: Annotated[int, typer.Option(help="Teacher denoising steps.")] = _EVAL.teacher_steps,
    teacher_guidance: Annotated[
        float | None, typer.Option(help="Teacher CFG scale (default: the teacher bundle's).")
    ] = None,
    negative_prompt: Annotated[
        str, typer.Option(help="Negative prompt of the teacher's CFG.")
    ] = _EVAL.negative_prompt,
    teacher_results: Annotated[
        Path | None,
        typer.Option(
            help="An earlier eval.json of the same teacher and eval set: its teacher results are reused, "
            "after the teacher is regenerated at the cheapest bucket and must reproduce them clip for clip."
        ),
    ] = None,
    vae: Annotated[bool, typer.Option(help="Measure VAE PSNR/SSIM (untiled and tiled).")] = _EVAL.vae,
    vae_clips: Annotated[
        int, typer.Option(help="Clips per bucket for the VAE metrics, spread evenly (0: all).")
    ] = 0,
    i2v: Annotated[bool, typer.Option(help="Measure image-to-video first-frame PSNR.")] = _EVAL.i2v,
    sheet_clips: Annotated[
        int, typer.Option(help="Clips on the contact sheet (0: none).")
    ] = _EVAL.sheet_clips,
    card: Annotated[
        bool, typer.Option(help="Write MODEL_CARD.md into the student bundle.")
    ] = _EVAL.write_card,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: bf16 on GPU).")] = None,
) -> None:
    """Evaluate a bundle per bucket on the held-out combinations (and teacher, VAE, I2V); write the card."""
    from hyv.training.eval.card import CARD_FILE
    from hyv.training.eval.runner import EVAL_FILE, SHEET_FILE, InvalidBundleError, evaluate_bundle

    explicit = (f"{size or _EVAL.size}x{size or _EVAL.size}x{frames or _EVAL.num_frames}",)
    try:
        config = EvalConfig(
            student=student,
            out_dir=out,
            teacher=teacher,
            size=size or _EVAL.size,
            num_frames=frames or _EVAL.num_frames,
            buckets=tuple(buckets.split(",")) if buckets.strip() else explicit if size or frames else (),
            samples_per_combination=samples_per_combination,
            combinations=combinations or None,
            seed=seed,
            batch_size=batch_size,
            teacher_steps=teacher_steps,
            teacher_guidance=teacher_guidance,
            negative_prompt=negative_prompt,
            teacher_results=teacher_results,
            vae=vae,
            vae_clips=vae_clips or None,
            i2v=i2v,
            sheet_clips=sheet_clips,
            write_card=card,
            device=device,
            dtype=dtype,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        results = evaluate_bundle(config)
    except InvalidBundleError as exc:
        raise exit_on_invalid_bundle(exc) from exc
    except ValueError as exc:  # e.g. a size or step count the bundle cannot serve
        console.print(f"[red]cannot evaluate: {exc}[/]")
        raise typer.Exit(2) from exc
    for row in results["thresholds"]:
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]not measured[/]"}[row["passed"]]
        value = "n/a" if row["value"] is None else f"{row['value']:.3g}"
        console.print(f"{row['bucket']} {row['label']}: {value} ({row['threshold']}) {verdict}")
    summary = {
        "eval": str(out / EVAL_FILE),
        "contact_sheet": str(out / SHEET_FILE) if sheet_clips else None,
        "card": str(student / CARD_FILE) if card else None,
        "student": results["student"]["accuracy"],
        "teacher": results["teacher"]["accuracy"] if results["teacher"] else None,
        "buckets": {
            b["bucket"]: {
                "student": b["student"]["accuracy"],
                "teacher": b["teacher"]["accuracy"] if b["teacher"] else None,
                "vae_psnr": (b["vae"] or {}).get("untiled", {}).get("psnr"),
                "i2v_psnr": (b["i2v"] or {}).get("psnr"),
            }
            for b in results["buckets"]
        },
        "passed": results["passed"],
        "wall_s": round(results["wall_s"], 1),
    }
    print(json.dumps(summary))


def retention_command(
    bundle: Annotated[Path, typer.Option(help="Bundle to probe (sampled as the teacher: true CFG).")],
    out: Annotated[
        Path, typer.Option(help="Directory for retention.json and retention.png.")
    ] = _RETENTION.out_dir,
    sigmas: Annotated[
        str, typer.Option(help="Start noise levels, comma-separated, in (0, 1].")
    ] = _RETENTION_SIGMAS,
    steps: Annotated[
        int, typer.Option(help="Steps of the full schedule (a start at s keeps those below s).")
    ] = _RETENTION.steps,
    guidance: Annotated[float | None, typer.Option(help="True CFG scale (default: the bundle's).")] = None,
    combinations: Combinations = 0,
    batch_size: BatchSize = _RETENTION.batch_size,
    device: Device = None,
) -> None:
    """Attribute retention by noise level: noise the held-out clips to s, denoise, judge (SDEdit probe)."""
    from hyv.training.eval.retention import RETENTION_FILE, RETENTION_PLOT, run_retention
    from hyv.training.eval.runner import InvalidBundleError

    try:
        levels = tuple(float(s) for s in sigmas.split(",") if s.strip())
        config = RetentionConfig(
            bundle=bundle,
            out_dir=out,
            sigmas=levels,
            steps=steps,
            guidance=guidance,
            combinations=combinations or None,
            batch_size=batch_size,
            device=device,
        )
        results = run_retention(config)
    except InvalidBundleError as exc:
        raise exit_on_invalid_bundle(exc) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for entry in results["curve"]:
        acc = entry["accuracy"]
        console.print(
            f"s={entry['sigma']:.2f} ({entry['steps']} steps): color {100 * acc['color']:.1f}%  "
            f"shape {100 * acc['shape']:.1f}%  motion {100 * acc['motion']:.1f}%  all {100 * acc['all']:.1f}%"
        )
    print(json.dumps({"retention": str(out / RETENTION_FILE), "plot": str(out / RETENTION_PLOT)}))


def extensions_command(
    bundle: Annotated[Path, typer.Option(help="Bundle to extend with (served as hyv serve runs it).")] = (
        DEFAULT_BUNDLE_DIR
    ),
    out: Annotated[
        Path, typer.Option(help="Directory for extensions.json and extensions.png.")
    ] = _EXTENSIONS.out_dir,
    motion: Annotated[
        str | None, typer.Option(help="Only the held-out combinations with this motion (default: all 44).")
    ] = None,
    frames: Annotated[
        int, typer.Option(help="Frames of the source and of the extension (4n+1).")
    ] = _EXTENSIONS.num_frames,
    device: Device = None,
) -> None:
    """Extensions judged: each held-out clip extended as POST /v1/videos/extensions runs it; does the
    motion carry on, and how do the seam and the object's size hold."""
    from hyv.training.eval.extensions import EXTENSIONS_FILE, EXTENSIONS_SHEET, run_extensions
    from hyv.training.eval.runner import InvalidBundleError

    try:
        config = ExtensionConfig(bundle=bundle, out_dir=out, motion=motion, num_frames=frames, device=device)
        results = run_extensions(config)
    except InvalidBundleError as exc:
        raise exit_on_invalid_bundle(exc) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    summary = results["summary"]
    for name, group in summary["by_motion"].items():
        console.print(
            f"{name}: motion kept in {group['same_motion']} of {group['n']} "
            f"({group['same_motion_visible_area']} by the visible area alone)"
        )
    console.print(
        f"motion kept in {summary['same_motion']} of {summary['n']} ({100 * summary['rate']:.1f}%; "
        f"{summary['same_motion_visible_area']} by the visible area alone); "
        f"seam PSNR mean {summary['seam_psnr_mean']:.1f} dB, min {summary['seam_psnr_min']:.1f} dB; "
        f"size dip mean {summary['size_dip_mean']:.2f}"
    )
    print(json.dumps({
        "rate": round(summary["rate"], 4),
        "rate_visible_area": round(summary["rate_visible_area"], 4),
        "extensions": str(out / EXTENSIONS_FILE),
        "sheet": str(out / EXTENSIONS_SHEET),
    }))  # fmt: skip
