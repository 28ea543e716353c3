"""`hyv train`: the training layer's commands (vae, dit, distill, eval, retention, bundle).

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
from hyv.training.eval.cli import eval_command, retention_command
from hyv.training.vae.cli import vae_command

console = Console(stderr=True)

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


@train_app.command("bundle")
def train_bundle_command(
    out: Annotated[Path, typer.Option(help="Run directory of all stages (checkpoints, caches).")] = Path(
        "runs/bundle"
    ),
    export_dir: Annotated[Path, typer.Option(help="Where the finished bundle goes.")] = Path(
        "weights/hyv-small"
    ),
    seed: Annotated[int, typer.Option(help="Seed of every stage.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    vae_steps: Annotated[int | None, typer.Option(help="VAE steps (default: the VAE trainer's).")] = None,
    dit_steps: Annotated[int, typer.Option(help="DiT flow-matching steps.")] = 20_000,
    dit_batch_size: Annotated[int, typer.Option(help="DiT clips per step.")] = 16,
    cfg_steps: Annotated[int | None, typer.Option(help="CFG-distillation steps.")] = None,
    distill_steps: Annotated[int | None, typer.Option(help="Step-distillation steps.")] = None,
    student_steps: Annotated[int, typer.Option(help="Sampling steps of the distilled student (<= 6).")] = 4,
    until: Annotated[str, typer.Option(help="Last stage: vae, dit, cfg, steps, export or eval.")] = "eval",
) -> None:
    """The whole recipe of the bundled model (VAE -> DiT -> CFG and step distillation -> export -> eval).

    Resumable: run the same command again after an interrupt and it continues where it stopped."""
    from hyv.training.recipe import RecipeConfig, train_bundle

    try:
        config = RecipeConfig(
            out_dir=out,
            export_dir=export_dir,
            seed=seed,
            device=device,
            vae_steps=vae_steps,
            dit_steps=dit_steps,
            dit_batch_size=dit_batch_size,
            cfg_steps=cfg_steps,
            distill_steps=distill_steps,
            student_steps=student_steps,
        )
        result = train_bundle(config, until=until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"Recipe finished up to stage {until}: {result}")


@train_app.command("dit")
def train_dit_command(
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, loss.png, the bundle.")] = Path(
        "runs/dit"
    ),
    bundle: Annotated[str, typer.Option(help="Bundle preset for a fresh start.")] = "small",
    init_from: Annotated[Path | None, typer.Option(help="Start from this bundle directory.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 10_000,
    batch_size: Annotated[int, typer.Option(help="Clips per step (per process).")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    lr_schedule: Annotated[str, typer.Option(help="After warmup: constant or cosine (to 0).")] = "constant",
    unshifted_fraction: Annotated[
        float, typer.Option(help="Share of sigmas drawn without the flow shift (more low-noise training).")
    ] = 0.0,
    latent_norm: Annotated[
        str, typer.Option(help="global (z x scaling factor) or per_channel (standardized per channel).")
    ] = "global",
    vae_path: Annotated[
        Path | None, typer.Option(help="A trained VAE replacing the bundle's (frozen).")
    ] = None,
    train_text_encoder: Annotated[
        bool,
        typer.Option(help="Train the built-in text encoder jointly (default: frozen)."),
    ] = False,
    cache_videos: Annotated[
        int, typer.Option(help="Encode this many train videos once and train on their latents (0: off).")
    ] = 0,
    cache_images: Annotated[int, typer.Option(help="Images in the latent cache.")] = 0,
    size: Annotated[int, typer.Option(help="Square training size in pixels (multiple of 16).")] = 64,
    frames: Annotated[int, typer.Option(help="Frames per training clip (4n+1).")] = 17,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of data, noise and init.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
) -> None:
    """Flow-matching training of the DiT on the synthetic clips (DDP under torchrun)."""
    from hyv.training.dit import DiTTrainConfig, train_dit

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
