"""`hyv train distill`: the typer command (registered by hyv/training/cli.py).

    hyv train distill --teacher runs/dit/bundle --out runs/distill --stage both

Stage `cfg` writes `<out>/cfg/bundle`, stage `steps` writes `<out>/steps/bundle`; `both` runs cfg,
then steps with the cfg student as its teacher. Every stage is resumable (`--resume` continues the
newest checkpoint of each stage; a finished stage is not retrained).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hyv.training.distill.config import STAGES, DistillConfig

console = Console()
_DEFAULT = DistillConfig()
logger = logging.getLogger(__name__)


def stage_configs(teacher: Path, out: Path, stage: str, **options: object) -> list[DistillConfig]:
    """The configs of the stages `stage` (cfg | steps | both) runs, chained teacher -> student."""
    if stage not in (*STAGES, "both"):
        raise ValueError(f"stage must be one of {[*STAGES, 'both']}, got {stage!r}")
    stages = list(STAGES) if stage == "both" else [stage]
    configs = []
    for name in stages:
        config = DistillConfig.for_stage(name, teacher=teacher, out_dir=out / name, **options)
        configs.append(config)
        teacher = config.out_dir / "bundle"
    return configs


def distill_command(
    teacher: Annotated[Path, typer.Option(help="Teacher bundle directory (from `hyv train dit`).")] = Path(
        "runs/dit/bundle"
    ),
    out: Annotated[
        Path, typer.Option(help="Run directory: <out>/cfg and <out>/steps, each with a bundle.")
    ] = Path("runs/distill"),
    stage: Annotated[str, typer.Option(help="cfg, steps, or both (cfg then steps).")] = "both",
    steps: Annotated[
        int | None, typer.Option(help="Optimizer steps per stage (default: cfg 1500, steps 2000).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step (per process); default 8.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate; default 1e-4.")] = None,
    student_steps: Annotated[
        int, typer.Option(help="Sampling steps of the step-distilled student (<= 6).")
    ] = _DEFAULT.student_steps,
    student_shift: Annotated[
        float | None, typer.Option(help="Flow shift of the student's schedule (default: the teacher's).")
    ] = None,
    teacher_steps: Annotated[
        int | None, typer.Option(help="Teacher Euler steps per trajectory (a multiple of --student-steps).")
    ] = None,
    teacher_samples: Annotated[
        int | None, typer.Option(help="Cached teacher samples (cfg) or trajectories (steps).")
    ] = None,
    cache_videos: Annotated[
        int | None,
        typer.Option(help="Training clips encoded once for captions and I2V frames (default 256)."),
    ] = None,
    size: Annotated[int, typer.Option(help="Square clip size in pixels (multiple of 16).")] = _DEFAULT.size,
    frames: Annotated[int, typer.Option(help="Frames per clip (4n+1).")] = _DEFAULT.num_frames,
    seed: Annotated[int, typer.Option(help="Seed of data, noise and guidance draws.")] = _DEFAULT.seed,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint of each stage.")] = False,
) -> None:
    """Distill the teacher: CFG into the guidance embedding, then <= 6 sampling steps."""
    from hyv.training.distill import train_distill

    if teacher_steps is None:
        teacher_steps = 24 if 24 % student_steps == 0 else student_steps * (24 // student_steps + 1)
    try:
        configs = stage_configs(
            teacher,
            out,
            stage,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            student_steps=student_steps,
            student_shift=student_shift,
            teacher_steps=teacher_steps,
            teacher_samples=teacher_samples,
            cache_videos=cache_videos,
            cache_images=None if cache_videos is None else max(1, cache_videos // 4),
            size=size,
            num_frames=frames,
            seed=seed,
            device=device,
            resume=resume,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not configs[0].teacher.is_dir():
        raise typer.BadParameter(f"--teacher {configs[0].teacher} is not a bundle directory")
    for config in configs:
        result = train_distill(config)
        console.print(f"[bold]{config.stage}[/bold] student bundle written to {result}")
