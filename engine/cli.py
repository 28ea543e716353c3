"""`hyv`: the project's one console command.

Later issues add `serve`, `worker`, `train` and `bench` here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.bundle import (
    BUNDLE_PRESETS,
    DEFAULT_BUNDLE_DIR,
    init_random_bundle,
    load_bundle,
    read_bundle_spec,
    save_bundle,
)

app = typer.Typer(help="HunyuanVideo-style video generation: models, generation and (soon) the service.")
console = Console()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("init-weights")
def init_weights(
    preset: Annotated[str, typer.Option(help=f"Bundle preset: {', '.join(BUNDLE_PRESETS)}.")] = "small",
    output: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")] = DEFAULT_BUNDLE_DIR,
    seed: Annotated[int, typer.Option(help="Initialization seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite an existing bundle.")] = False,
) -> None:
    """Write a model bundle with RANDOM weights (the pipeline runs; the video is noise until trained)."""
    if (output / "bundle.json").exists() and not force:
        console.print(f"[yellow]{output} already holds a bundle; pass --force to overwrite.[/]")
        raise typer.Exit(0)
    try:
        bundle = init_random_bundle(preset, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    save_bundle(bundle, output)
    params = sum(p.numel() for p in bundle.dit.parameters())
    console.print(
        f"Wrote untrained bundle [bold]{preset}[/] to {output} (DiT: {params / 1e6:.1f}M parameters)."
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="MP4 file to write.")] = Path(
        "outputs/video.mp4"
    ),
    model: Annotated[Path, typer.Option("--weights", help="Model bundle directory.")] = DEFAULT_BUNDLE_DIR,
    width: Annotated[int | None, typer.Option(help="Width in pixels (multiple of 16).")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels (multiple of 16).")] = None,
    num_frames: Annotated[int | None, typer.Option("--frames", help="Frames, 4n+1.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate one video from a prompt and write it as an MP4."""
    from engine.generate import GenerationRequest, generate_video

    try:
        spec = read_bundle_spec(model)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    if not spec.trained:
        console.print(
            f"[yellow]{model} holds untrained (random) weights: expect noise. "
            "The trained bundle comes from `hyv train` (training issue).[/]"
        )
    bundle = load_bundle(model)
    request = GenerationRequest(prompt, width, height, num_frames, steps, guidance, seed=seed)
    with Progress(
        TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("denoise", total=None)
        try:
            result = generate_video(
                bundle, request, on_step=lambda i, n: progress.update(task, completed=i, total=n)
            )
        except ValueError as exc:
            console.print(f"[red]invalid request: {exc}[/]")
            raise typer.Exit(2) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.mp4)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    size = f"{result.width}x{result.height}, {result.num_frames} frames @ {result.fps} fps"
    console.print(f"Wrote {output} ({size}): {stages}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Official .pt/.safetensors or a diffusers directory.")],
    output: Annotated[Path, typer.Argument(help="Directory for the project's own format.")],
    kind: Annotated[str, typer.Option(help="dit or vae.")] = "dit",
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "bf16",
) -> None:
    """Convert an official or diffusers checkpoint into the project's own format."""
    from models import load_dit, load_vae, save_dit, save_vae
    from models.checkpoint_io import parse_dtype

    if kind == "dit":
        save_dit(load_dit(source, dtype=parse_dtype(dtype)), output)
    elif kind == "vae":
        save_vae(load_vae(source, dtype=parse_dtype(dtype)), output)
    else:
        raise typer.BadParameter(f"--kind must be 'dit' or 'vae', got {kind!r}")
    console.print(f"Converted {kind} {source} -> {output}")


if __name__ == "__main__":
    app()
