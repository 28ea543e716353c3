"""`hyv train vae`: typed options over `VAETrainConfig` (the lead registers `vae_command`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from hyv.training.vae.config import VAETrainConfig

_DEFAULT = VAETrainConfig()


def vae_command(
    out: Annotated[
        Path, typer.Option(help="Output directory (checkpoints, vae/, eval.json, loss.png).")
    ] = _DEFAULT.out_dir,
    preset: Annotated[
        str, typer.Option(help="VAE preset to train from scratch (hyv.models.vae_preset).")
    ] = _DEFAULT.preset,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from a saved VAE instead of a preset.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps over the whole curriculum.")] = _DEFAULT.steps,
    batch_size: Annotated[int, typer.Option(help="Clips per batch at the final size.")] = _DEFAULT.batch_size,
    low_res_batch_size: Annotated[
        int, typer.Option(help="Clips per batch in the low-res phase.")
    ] = _DEFAULT.low_res_batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = _DEFAULT.lr,
    size: Annotated[int, typer.Option(help="Final clip size in pixels (multiple of 8).")] = _DEFAULT.size,
    frames: Annotated[int, typer.Option(help="Final clip length, 4n+1 frames.")] = _DEFAULT.num_frames,
    low_res_size: Annotated[
        int, typer.Option(help="Clip size of the low-res phase.")
    ] = _DEFAULT.low_res_size,
    low_res_frames: Annotated[
        int, typer.Option(help="Clip length of the low-res phase.")
    ] = _DEFAULT.low_res_frames,
    crop_size: Annotated[int, typer.Option(help="Crop size of the crop phase.")] = _DEFAULT.crop_size,
    mse_weight: Annotated[float, typer.Option(help="Weight of the L2 term beside L1.")] = _DEFAULT.mse_weight,
    foreground_weight: Annotated[
        float, typer.Option(help="Extra reconstruction weight on object pixels.")
    ] = _DEFAULT.foreground_weight,
    foreground_weight_end: Annotated[
        float, typer.Option(help="Object-pixel weight at the last step (linear decay).")
    ] = _DEFAULT.foreground_weight_end,
    kl_weight: Annotated[
        float, typer.Option(help="Weight of the KL term (per latent element).")
    ] = _DEFAULT.kl_weight,
    perceptual_weight: Annotated[
        float, typer.Option(help="Weight of the fixed-feature perceptual loss.")
    ] = _DEFAULT.perceptual_weight,
    gan_weight: Annotated[
        float, typer.Option(help="Weight of the (adaptive) GAN loss; 0 disables it.")
    ] = _DEFAULT.gan_weight,
    gan_start: Annotated[int, typer.Option(help="First step with the GAN loss.")] = _DEFAULT.gan_start,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints.")
    ] = _DEFAULT.checkpoint_every,
    seed: Annotated[int, typer.Option(help="Seed of the init, the data and the noise.")] = _DEFAULT.seed,
    device: Annotated[
        str | None, typer.Option(help="Torch device (default: cuda if available, else cpu).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train the causal 3D VAE on synthetic clips; writes OUT/vae, OUT/eval.json and OUT/loss.png."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = VAETrainConfig(
            out_dir=out,
            preset=preset,
            init_from=init_from,
            steps=steps,
            batch_size=batch_size,
            low_res_batch_size=low_res_batch_size,
            lr=lr,
            size=size,
            num_frames=frames,
            low_res_size=low_res_size,
            low_res_frames=low_res_frames,
            crop_size=crop_size,
            mse_weight=mse_weight,
            foreground_weight=foreground_weight,
            foreground_weight_end=foreground_weight_end,
            kl_weight=kl_weight,
            perceptual_weight=perceptual_weight,
            gan_weight=gan_weight,
            gan_start=gan_start,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
            resume=resume,
            progress=progress,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from hyv.training.vae.trainer import train_vae

    directory = train_vae(config)
    typer.echo(f"VAE saved to {directory}")


def main() -> None:  # `python -m hyv.training.vae.cli`
    typer.run(vae_command)


if __name__ == "__main__":
    main()
