"""`hyv train lora` and `hyv train lora-eval`: the typer commands (registered by hyv/training/cli.py).

    hyv train lora --out runs/lora/bouncing --output weights/hyv-small/loras/bouncing.safetensors
    hyv train lora-eval --adapter weights/hyv-small/loras/bouncing.safetensors

`lora` is resumable (`--resume` continues the newest checkpoint in --out). Both print one JSON line
on stdout; progress and messages go to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.training.lora.config import TIMESTEP_SAMPLINGS, LoRATrainConfig
from hyv.training.lora.evaluate import LoRAEvalConfig

console = Console(stderr=True, soft_wrap=True)
_LORA = LoRATrainConfig()  # the options' defaults are the config's
_EVAL = LoRAEvalConfig(base=DEFAULT_BUNDLE_DIR, adapter=Path("adapter.safetensors"))

Threads = Annotated[
    int, typer.Option(help="torch CPU threads (0: torch's default). 1 is fastest beside another busy job.")
]


def _set_threads(threads: int) -> None:
    if threads < 0:
        raise typer.BadParameter(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def lora_command(
    out: Annotated[
        Path, typer.Option(help="Run directory: checkpoints, losses, the clip cache.")
    ] = _LORA.out_dir,
    base: Annotated[Path, typer.Option(help="Bundle whose DiT is adapted (frozen).")] = _LORA.base,
    output: Annotated[
        Path | None, typer.Option(help="Adapter file to write (default: <out>/adapter.safetensors).")
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = _LORA.rank,
    alpha: Annotated[
        float, typer.Option(help="LoRA alpha (the update is scaled by alpha / rank).")
    ] = _LORA.alpha,
    targets: Annotated[
        str,
        typer.Option(
            help="Comma-separated globs over the DiT's Linear module paths, e.g. 'single_blocks.*.linear1'."
        ),
    ] = ",".join(_LORA.targets),
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = _LORA.steps,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (cosine to 0 after warmup).")] = _LORA.lr,
    batch_size: Annotated[int, typer.Option(help="Clips per step.")] = _LORA.batch_size,
    timestep_sampling: Annotated[
        str,
        typer.Option(help=f"Noise levels: {' or '.join(TIMESTEP_SAMPLINGS)} (the bundle's sampling sigmas)."),
    ] = _LORA.timestep_sampling,
    min_sigma: Annotated[float, typer.Option(help="Lowest noise level trained at.")] = _LORA.min_sigma,
    cache_videos: Annotated[
        int, typer.Option(help="Bouncing clips encoded once and trained on.")
    ] = _LORA.cache_videos,
    prior_fraction: Annotated[
        float,
        typer.Option(help="Share of each batch from the base data, kept at the base model's prediction."),
    ] = _LORA.prior_fraction,
    checkpoint_every: Annotated[
        int, typer.Option(help="Steps between checkpoints.")
    ] = _LORA.checkpoint_every,
    seed: Annotated[int, typer.Option(help="Seed of the clips, noise and the adapter's init.")] = _LORA.seed,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    threads: Threads = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")] = False,
) -> None:
    """Train a LoRA adapter on the bundle's DiT that teaches `bouncing` (flow matching; base frozen)."""
    from hyv.training.lora.trainer import train_lora

    _set_threads(threads)
    try:
        config = LoRATrainConfig(
            out_dir=out,
            base=base,
            output=output,
            rank=rank,
            alpha=alpha,
            targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            timestep_sampling=timestep_sampling,
            min_sigma=min_sigma,
            cache_videos=cache_videos,
            prior_fraction=prior_fraction,
            checkpoint_every=checkpoint_every,
            seed=seed,
            device=device,
            resume=resume,
        )
        if not (base / "dit").is_dir():
            raise ValueError(f"--base {base} is not a bundle directory (no dit/)")
        path = train_lora(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    print(json.dumps({"adapter": str(path), "bytes": path.stat().st_size, "steps": config.steps}))


def lora_eval_command(
    adapter: Annotated[Path, typer.Option(help="Adapter file (hyv-lora safetensors).")],
    base: Annotated[Path, typer.Option(help="Bundle the adapter was trained on.")] = DEFAULT_BUNDLE_DIR,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    scales: Annotated[str, typer.Option(help="Adapter scales, comma-separated.")] = "0,1",
    samples_per_combination: Annotated[
        int, typer.Option(help="Clips per held-out bouncing combination (10 combinations).")
    ] = _EVAL.samples_per_combination,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = _EVAL.seed,
    batch_size: Annotated[int, typer.Option(help="Clips per batched generation.")] = _EVAL.batch_size,
    other_motions: Annotated[
        bool,
        typer.Option(help="Also judge the base model's 44 held-out captions with and without the adapter."),
    ] = _EVAL.other_motions,
    threads: Threads = 0,
) -> None:
    """Held-out bouncing prompts with and without the adapter: fraction judged bouncing, colour, shape."""
    from hyv.training.lora.evaluate import evaluate_adapter

    _set_threads(threads)
    try:
        config = LoRAEvalConfig(
            base=base,
            adapter=adapter,
            out=out,
            scales=tuple(float(s) for s in scales.split(",") if s.strip()),
            samples_per_combination=samples_per_combination,
            seed=seed,
            batch_size=batch_size,
            other_motions=other_motions,
        )
        report = evaluate_adapter(config)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for name, entry in [("without adapter", report["without_adapter"]), *report["scales"].items()]:
        label = name if name == "without adapter" else f"scale {name}"
        console.print(
            f"{label}: bouncing {100 * entry['bouncing']:.1f}%  colour {100 * entry['color']:.1f}%  "
            f"shape {100 * entry['shape']:.1f}%  ({entry['n']} clips)"
        )
    summary = {
        "bouncing": {name: entry["bouncing"] for name, entry in report["scales"].items()},
        "without_adapter": report["without_adapter"]["bouncing"],
        "scale0_identical": report.get("scale0_identical"),
        "base_untouched": report["base_untouched"],
        "passed": report["passed"],
        "seconds": report["seconds"],
    }
    print(json.dumps(summary))
