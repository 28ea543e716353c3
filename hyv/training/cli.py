"""`hyv train`: the training layer's commands (vae, dit, distill, eval, retention, extensions, bundle,
lora, lora-eval).

hyv.cli loads this group only when `hyv train ...` runs: training imports torch and the models,
which `hyv --help` and the API's `hyv serve --workers 0` never need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hyv.training.distill.cli import distill_command
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.eval.cli import eval_command, extensions_command, retention_command
from hyv.training.lora.cli import lora_command, lora_eval_command
from hyv.training.recipe import from_options, option_defaults
from hyv.training.vae.cli import vae_command

console = Console(stderr=True)
_DIT = DiTTrainConfig()  # the `hyv train dit` defaults
_BUNDLE = option_defaults()  # the `hyv train bundle` defaults

# Its help text is hyv.cli's (shown without importing this module).
train_app = typer.Typer(no_args_is_help=True)


@train_app.callback()
def train_main() -> None:
    """Training reports its milestones (held-out PSNR at checkpoints, stage times) at INFO level:
    show them without the noise of `--verbose`."""
    logging.getLogger("hyv.training").setLevel(min(logging.INFO, logging.getLogger().level))


train_app.command("vae")(vae_command)
train_app.command("distill")(distill_command)
train_app.command("eval")(eval_command)
train_app.command("retention")(retention_command)
train_app.command("extensions")(extensions_command)
train_app.command("lora")(lora_command)
train_app.command("lora-eval")(lora_eval_command)


@train_app.command("bundle")
def train_bundle_command(
    out: Annotated[Path, typer.Option(help="Run directory of all stages (checkpoints, caches).")] = _BUNDLE[
        "out"
    ],
    export_dir: Annotated[Path, typer.Option(help="Where the finished bundle goes.")] = _BUNDLE["export_dir"],
    seed: Annotated[int, typer.Option(help="Seed of every stage.")] = _BUNDLE["seed"],
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = _BUNDLE[
        "device"
    ],
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (default: the VAE trainer's).")] = None,
    dit_steps: Annotated[int, typer.Option(help="DiT flow-matching steps.")] = _BUNDLE["dit_steps"],
    dit_batch_size: Annotated[int, typer.Option(help="DiT clips per step.")] = _BUNDLE["dit_batch_size"],
    cfg_steps: Annotated[int, typer.Option(help="CFG-distillation steps.")] = _BUNDLE["cfg_steps"],
    distill_steps: Annotated[int, typer.Option(help="Step-distillation steps.")] = _BUNDLE["distill_steps"],
    student_steps: Annotated[
        int, typer.Option(help="Sampling steps of the distilled student (<= 6).")
    ] = _BUNDLE["student_steps"],
    distill_samples: Annotated[
        int, typer.Option(help="Teacher trajectories the step distillation regresses on.")
    ] = _BUNDLE["distill_samples"],
    distill_bucket_balance: Annotated[
        float,
        typer.Option(
            help="Step distillation: video buckets drawn in proportion to (clips per batch) ** -b; "
            "0 draws each equally often, 1 gives each as many clips."
        ),
    ] = _BUNDLE["distill_bucket_balance"],
    bucket_steps: Annotated[
        int, typer.Option(help="Steps of the progressive DiT stage on every bucket.")
    ] = _BUNDLE["bucket_steps"],
    continuation_steps: Annotated[
        int,
        typer.Option(help="Steps of the teacher's extension fine-tune on continuation clips."),
    ] = _BUNDLE["continuation_steps"],
    tune_continuations: Annotated[
        bool,
        typer.Option(
            help="Fine-tune the teacher on continuation clips (stage continuations), so that it and "
            "the student extend videos; --no-tune-continuations passes the progressive DiT on."
        ),
    ] = _BUNDLE["tune_continuations"],
    large_steps: Annotated[
        int, typer.Option(help="Steps of the teacher's fine-tune on the largest bucket (stage large).")
    ] = _BUNDLE["large_steps"],
    tune_large: Annotated[
        bool,
        typer.Option(
            help="Fine-tune the teacher on the largest bucket, 128x128 x 17 (stage large); "
            "--no-tune-large (the default) passes the continuations stage's teacher on."
        ),
    ] = _BUNDLE["tune_large"],
    stage1_from: Annotated[
        Path | None,
        typer.Option(help="An earlier bundle whose VAE and DiT stand in for stages vae and dit."),
    ] = None,
    tune_vae: Annotated[
        bool, typer.Option(help="Fine-tune the VAE at the buckets' pixel scale (stage vae_buckets).")
    ] = _BUNDLE["tune_vae"],
    distill_cfg: Annotated[
        bool,
        typer.Option(
            help="Distill CFG into the guidance embedding first (stage cfg); --no-distill-cfg (the "
            "default): the step distillation learns the teacher's true CFG directly."
        ),
    ] = _BUNDLE["distill_cfg"],
    teacher_results: Annotated[
        Path | None,
        typer.Option(
            help="An earlier eval.json of the same teacher: the eval reuses its teacher results "
            "(checked by regenerating the cheapest bucket)."
        ),
    ] = None,
    until: Annotated[
        str,
        typer.Option(
            help="Last stage: vae, vae_buckets, dit, dit_buckets, continuations, large, cfg, steps, export "
            "or eval."
        ),
    ] = "eval",
) -> None:
    """The whole recipe of the bundled model (VAE -> DiT, low resolution then every bucket -> CFG and
    step distillation -> export -> eval).

    Resumable: run the same command again after an interrupt and it continues where it stopped."""
    from hyv.training.recipe import train_bundle

    try:
        config = from_options(
            out=out,
            export_dir=export_dir,
            seed=seed,
            device=device,
            vae_steps=vae_steps,
            dit_steps=dit_steps,
            dit_batch_size=dit_batch_size,
            cfg_steps=cfg_steps,
            distill_steps=distill_steps,
            student_steps=student_steps,
            distill_samples=distill_samples,
            distill_bucket_balance=distill_bucket_balance,
            bucket_steps=bucket_steps,
            continuation_steps=continuation_steps,
            tune_continuations=tune_continuations,
            large_steps=large_steps,
            tune_large=tune_large,
            stage1_from=stage1_from,
            tune_vae=tune_vae,
            distill_cfg=distill_cfg,
            teacher_results=teacher_results,
        )
        result = train_bundle(config, until=until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"Recipe finished up to stage {until}: {result}")


@train_app.command("dit")
def train_dit_command(
    out: Annotated[
        Path, typer.Option(help="Run directory: checkpoints, loss.png, the bundle.")
    ] = _DIT.out_dir,
    bundle: Annotated[str, typer.Option(help="Bundle preset for a fresh start.")] = _DIT.bundle,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this bundle directory.")
    ] = _DIT.init_from,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = _DIT.steps,
    batch_size: Annotated[int, typer.Option(help="Clips per step (per process).")] = _DIT.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = _DIT.lr,
    lr_schedule: Annotated[
        str, typer.Option(help="After warmup: constant or cosine (to 0).")
    ] = _DIT.lr_schedule,
    unshifted_fraction: Annotated[
        float, typer.Option(help="Share of sigmas drawn without the flow shift (more low-noise training).")
    ] = _DIT.unshifted_fraction,
    latent_norm: Annotated[
        str, typer.Option(help="global (z x scaling factor) or per_channel (standardized per channel).")
    ] = _DIT.latent_norm,
    vae_path: Annotated[
        Path | None, typer.Option(help="A trained VAE replacing the bundle's (frozen).")
    ] = _DIT.vae_path,
    train_text_encoder: Annotated[
        bool,
        typer.Option(help="Train the built-in text encoder jointly (default: frozen)."),
    ] = _DIT.train_text_encoder,
    cache_videos: Annotated[
        int, typer.Option(help="Encode this many train videos once and train on their latents (0: off).")
    ] = _DIT.cache_videos,
    cache_images: Annotated[int, typer.Option(help="Images in the latent cache.")] = _DIT.cache_images,
    size: Annotated[int, typer.Option(help="Square training size in pixels (multiple of 16).")] = _DIT.size,
    frames: Annotated[int, typer.Option(help="Frames per training clip (4n+1).")] = _DIT.num_frames,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = _DIT.checkpoint_every,
    seed: Annotated[int, typer.Option(help="Seed of data, noise and init.")] = _DIT.seed,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if available).")
    ] = _DIT.device,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = _DIT.resume,
) -> None:
    """Flow-matching training of the DiT on the synthetic clips (DDP under torchrun)."""
    from hyv.training.dit import train_dit

    try:
        config = DiTTrainConfig(
            out_dir=out,
            bundle=bundle,
            init_from=init_from,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            unshifted_fraction=unshifted_fraction,
            latent_norm=latent_norm,
            vae_path=vae_path,
            train_text_encoder=train_text_encoder,
            cache_videos=cache_videos,
            cache_images=cache_images,
            size=size,
            num_frames=frames,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
            resume=resume,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = train_dit(config)
    console.print(f"Trained bundle written to {result}")


@train_app.command("export-teacher")
def export_teacher_command(
    run: Annotated[
        Path | None,
        typer.Option(
            help="A recipe run directory: the DiT its student was distilled from (stage continuations, "
            "else dit_buckets) is the teacher."
        ),
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="The teacher bundle itself (instead of --run).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the teacher bundle goes (replaced).")] = Path(
        "weights/hyv-small-teacher"
    ),
    student: Annotated[
        Path, typer.Option(help="The student bundle whose limits (sizes, frames) the teacher takes.")
    ] = Path("weights/hyv-small"),
    name: Annotated[
        str | None, typer.Option(help="Served name (default: the student's + '-teacher').")
    ] = None,
    steps: Annotated[int, typer.Option(help="Default sampling steps (true CFG).")] = 50,
    dtype: Annotated[str, typer.Option(help="fp16, bf16 or fp32.")] = "fp16",
    share: Annotated[
        bool, typer.Option(help="Link the VAE and text encoder to the student's when byte-identical.")
    ] = True,
) -> None:
    """The undistilled teacher (50 steps, true CFG) as a served bundle beside the student."""
    from hyv.training.teacher_export import export_teacher, teacher_of_run

    if (run is None) == (teacher is None):
        raise typer.BadParameter("give exactly one of --run and --teacher")
    try:
        source = teacher if teacher is not None else teacher_of_run(run)  # type: ignore[arg-type]
        result = export_teacher(
            source, student, out, name=name, steps=steps, dtype=dtype, share_with=student if share else None
        )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"Exported the teacher {source} -> {result.directory} as {result.name!r} "
        f"(guidance embedding {'dropped' if result.dropped_guidance_embed else 'kept, true CFG'}; "
        f"shared with the student: {', '.join(result.shared) or 'nothing'})"
    )
