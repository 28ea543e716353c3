"""`hyv`: the project's one console command.

generate, init-weights, convert; train (vae, dit, distill, eval, bundle); serve and worker (the
HTTP service, from service/).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from engine.bundle import (
    BUNDLE_PRESETS,
    DEFAULT_BUNDLE_DIR,
    init_random_bundle,
    read_bundle_spec,
    save_bundle,
)
from models.checkpoint_io import parse_dtype

app = typer.Typer(
    help="HunyuanVideo-style video generation: models, generation and (soon) the service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)  # progress and messages on stderr; stdout carries the JSON line


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _dtype(name: str | None) -> torch.dtype | None:

    try:
        return parse_dtype(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command("init-weights")
def init_weights(
    preset: Annotated[str, typer.Option(help=f"Bundle preset: {', '.join(BUNDLE_PRESETS)}.")] = "small",
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")] = DEFAULT_BUNDLE_DIR,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (bf16 for the 13B).")] = "fp32",
    seed: Annotated[int, typer.Option(help="Initialization seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing bundle.")] = False,
) -> None:
    """Write a model bundle with RANDOM weights (the pipeline runs; the video is noise until trained)."""
    if (out / "bundle.json").exists() and not force:
        console.print(f"[yellow]{out} already holds a bundle; pass --force to overwrite.[/]")
        raise typer.Exit(0)
    try:
        bundle = init_random_bundle(preset, seed=seed, dtype=_dtype(dtype) or torch.float32)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    save_bundle(bundle, out)
    params = sum(p.numel() for p in bundle.dit.parameters())
    console.print(f"Wrote untrained bundle [bold]{preset}[/] to {out} (DiT: {params / 1e6:.1f}M parameters).")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="MP4 file to write.")] = Path("outputs/video.mp4"),
    weights: Annotated[Path, typer.Option(help="Model bundle directory.")] = DEFAULT_BUNDLE_DIR,
    image: Annotated[Path | None, typer.Option(help="First frame for image-to-video.")] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels (multiple of 16).")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels (multiple of 16).")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames, 4n+1.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the MP4.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt (true-CFG models).")] = "",
    seed: Annotated[int | None, typer.Option(help="Random seed (default: random, printed).")] = None,
    sp: Annotated[
        int, typer.Option(help="Sequence-parallel processes on this machine (or run under torchrun).")
    ] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: bf16 on GPU).")] = None,
    text_encoder: Annotated[Path | None, typer.Option(help="HunyuanVideo text encoders (13B).")] = None,
    offload: Annotated[bool, typer.Option(help="Text encoder and VAE on the CPU during denoising.")] = False,
    offload_blocks: Annotated[bool, typer.Option(help="DiT blocks on the CPU (small GPUs).")] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the DiT blocks.")] = False,
) -> None:
    """Generate one video and write it as an MP4; prints one JSON line (path, stage seconds, memory)."""
    from pydantic import ValidationError

    from engine.pipeline import PipelineOptions, VideoPipeline, default_device_and_dtype
    from engine.pipeline import Progress as StepProgress
    from engine.request import GenerationRequest

    try:
        spec = read_bundle_spec(weights)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if not spec.trained:
        console.print(f"[yellow]{weights} holds untrained (random) weights: expect noise.[/]")
    try:
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=image.read_bytes() if image is not None else None,
            width=width,
            height=height,
            num_frames=frames,
            fps=fps,
            steps=steps,
            guidance=guidance,
            seed=seed,
        )
    except (ValidationError, OSError) as exc:
        console.print(f"[red]invalid request: {exc}[/]")
        raise typer.Exit(2) from exc
    default_device, default_dtype = default_device_and_dtype()
    options = PipelineOptions(
        device=device or default_device,
        dtype=_dtype(dtype) or default_dtype,
        offload_encoders=offload,
        offload_blocks=offload_blocks,
        compile_blocks=compile,
    )
    from engine.parallel.launch import launched_by_torchrun

    if sp > 1 or launched_by_torchrun():  # torchrun: one process per GPU, world size from torchrun
        from engine.parallel.generate import generate_sequence_parallel

        summary = generate_sequence_parallel(weights, request, options, out, sp, text_encoder)
        print(json.dumps({"path": str(out), **summary}))
        return
    try:
        pipeline = VideoPipeline.from_dir(weights, options, text_encoder_path=text_encoder)
        pipeline.plan(request)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]invalid request: {exc}[/]")
        raise typer.Exit(2) from exc
    with Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(event: StepProgress) -> None:
            if event.stage not in ("denoise", "decode"):
                return
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total)
            bar.update(tasks[event.stage], completed=event.step, total=event.total)

        result = pipeline.generate(request, on_progress=on_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.mp4)
    print(json.dumps({"path": str(out), **result.summary()}))


train_app = typer.Typer(
    help="Train the bundled model: vae, dit, distill, eval - or all of them in order with `bundle`."
)
app.add_typer(train_app, name="train")


@train_app.callback()
def train_main() -> None:
    """Training reports its milestones (held-out PSNR at checkpoints, stage times) at INFO level:
    show them without the noise of `--verbose`."""
    logging.getLogger("training").setLevel(min(logging.INFO, logging.getLogger().level))


def _register_training_commands() -> None:
    from training.distill.cli import distill_command
    from training.eval.cli import eval_command, retention_command
    from training.vae.cli import vae_command

    train_app.command("vae")(vae_command)
    train_app.command("distill")(distill_command)
    train_app.command("eval")(eval_command)
    train_app.command("retention")(retention_command)


_register_training_commands()


def _register_service_commands() -> None:
    from service import cli as service_cli

    app.command("serve")(service_cli.serve)
    app.command("worker")(service_cli.worker)


_register_service_commands()


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
    from training.recipe import RecipeConfig, train_bundle

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
    from training.dit import DiTTrainConfig, train_dit

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


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Official .pt/.safetensors or a diffusers directory.")],
    output: Annotated[Path, typer.Argument(help="Directory for the project's own format.")],
    kind: Annotated[str, typer.Option(help="dit or vae.")] = "dit",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "bf16",
) -> None:
    """Convert an official or diffusers checkpoint into the project's own format."""
    from models import load_dit, load_vae, save_dit, save_vae

    if kind == "dit":
        save_dit(load_dit(source, dtype=_dtype(dtype)), output)
    elif kind == "vae":
        save_vae(load_vae(source, dtype=_dtype(dtype)), output)
    else:
        raise typer.BadParameter(f"--kind must be 'dit' or 'vae', got {kind!r}")
    console.print(f"Converted {kind} {source} -> {output}")


if __name__ == "__main__":
    app()
