"""The bundled model's recipe: one resumable command from nothing to `weights/hyv-small`.

    hyv train bundle                      # == the five stages below, each resumable

1. **vae**      `hyv.training.vae`: the causal 3D VAE on synthetic clips (curriculum, GAN, tiling phase)
2. **dit**      `hyv.training.dit`: flow matching of the small DiT + built-in text encoder on its latents
3. **cfg**      `hyv.training.distill` stage cfg: true CFG distilled into the guidance embedding
4. **steps**    `hyv.training.distill` stage steps: phased trajectory distillation to <= 6 steps
5. **export**   the student in fp16 safetensors (+ its schedule metadata) into `export_dir`, with
                `recipe.json` (commands, seeds, steps, wall time per stage); then **eval**
                (`hyv.training.eval`, teacher = the stage-2 DiT with 50 steps of true CFG) writes
                `eval.json` and `MODEL_CARD.md` next to the weights.

Every stage runs with its trainer's `resume`, and `out_dir/recipe_state.json` records the stages
that finished (with their output and wall time), so running the command again after an interrupt
continues where it stopped; a finished stage is never rerun. Wall times add up across sessions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hyv.engine.bundle import BUNDLE_PRESETS, CHECKOUT_BUNDLE_DIR, load_bundle, save_bundle
from hyv.models import read_dit_metadata

logger = logging.getLogger(__name__)

STATE_FILE = "recipe_state.json"
RECIPE_FILE = "recipe.json"
STAGES = ("vae", "dit", "cfg", "steps", "export", "eval")


@dataclass
class RecipeConfig:
    out_dir: Path = Path("runs/bundle")
    export_dir: Path = CHECKOUT_BUNDLE_DIR
    seed: int = 0
    device: str | None = None
    size: int = 64
    num_frames: int = 17
    # --- stage lengths (None: the stage trainer's own default) ---
    vae_steps: int | None = None
    dit_steps: int = 20_000
    dit_batch_size: int = 16
    dit_lr: float = 6e-4
    dit_lr_schedule: str = "cosine"  # after warmup: cosine to 0 at dit_steps (or constant)
    dit_unshifted_fraction: float = 0.3  # share of DiT sigmas drawn without the flow shift
    dit_latent_norm: str = "per_channel"  # the DiT's latents standardized per channel (or global)
    dit_train_text_encoder: bool = False  # the built-in text encoder stays at its random init (frozen)
    dit_cache_videos: int = 3000
    dit_cache_images: int = 750
    cfg_steps: int | None = None
    distill_steps: int | None = None
    student_steps: int = 4
    eval_samples_per_combination: int = 2  # 88 clips: one clip is 1.1 points, not 2.3
    export_dtype: str = "fp16"
    bundle_preset: str = "small"  # hyv.engine.bundle preset: the DiT, VAE and text-encoder sizes
    progress: bool = True
    # Extra fields for each stage's own config (smoke tests, experiments): {"field": value}.
    vae_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    dit_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    cfg_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir, self.export_dir = Path(self.out_dir), Path(self.export_dir)
        if self.export_dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"RecipeConfig.export_dtype={self.export_dtype!r} must be fp16, bf16 or fp32")
        if (
            self.bundle_preset not in BUNDLE_PRESETS
            or BUNDLE_PRESETS[self.bundle_preset].text_encoder_preset is None
        ):
            raise ValueError(
                f"RecipeConfig.bundle_preset={self.bundle_preset!r} must be a bundle preset with a built-in "
                f"text encoder: {[k for k, v in BUNDLE_PRESETS.items() if v.text_encoder_preset]}"
            )
        if not 1 <= self.student_steps <= 6:
            raise ValueError(f"RecipeConfig.student_steps={self.student_steps} must be in 1..6")
        for name in ("dit_steps", "dit_batch_size", "size", "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"RecipeConfig.{name}={getattr(self, name)} must be positive")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out_dir"], data["export_dir"] = str(self.out_dir), str(self.export_dir)
        return data

    # --- where each stage writes ---
    @property
    def vae_run(self) -> Path:
        return self.out_dir / "vae"

    @property
    def dit_run(self) -> Path:
        return self.out_dir / "dit"

    @property
    def cfg_run(self) -> Path:
        return self.out_dir / "distill" / "cfg"

    @property
    def steps_run(self) -> Path:
        return self.out_dir / "distill" / "steps"

    @property
    def eval_run(self) -> Path:
        return self.out_dir / "eval"


def _dtype(name: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


class Recipe:
    def __init__(self, config: RecipeConfig) -> None:
        self.config = config
        config.out_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = config.out_dir / STATE_FILE
        self.state: dict[str, Any] = {"stages": {}, "command": " ".join(sys.argv)}
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_path)

    def _run(self, name: str, fn: Callable[[], Path], settings: dict[str, Any]) -> Path:
        """Run one stage unless it finished before; its wall time accumulates over interrupted tries."""
        done = self.state["stages"].get(name, {})
        if done.get("finished") and Path(done["output"]).exists():
            logger.info("recipe: stage %s already finished -> %s", name, done["output"])
            return Path(done["output"])
        logger.info("recipe: stage %s starting", name)
        start = time.perf_counter()
        previous = float(done.get("wall_s", 0.0))
        self.state["stages"][name] = {"finished": False, "wall_s": previous, "settings": settings}
        self._save_state()
        try:
            output = fn()
        finally:
            self.state["stages"][name]["wall_s"] = previous + time.perf_counter() - start
            self._save_state()
        self.state["stages"][name].update(finished=True, output=str(output))
        self._save_state()
        logger.info("recipe: stage %s done in %.0f s", name, self.state["stages"][name]["wall_s"])
        return output

    # --- the stages ---

    def vae(self) -> Path:
        from hyv.training.vae import VAETrainConfig, train_vae

        c = self.config
        changes: dict[str, Any] = dict(
            out_dir=c.vae_run, seed=c.seed, device=c.device, size=c.size, num_frames=c.num_frames, resume=True
        )
        if c.vae_steps is not None:
            changes["steps"] = c.vae_steps
        changes["preset"] = BUNDLE_PRESETS[c.bundle_preset].vae_preset
        config = VAETrainConfig(**{**changes, "progress": c.progress, **c.vae_overrides})
        return self._run("vae", lambda: train_vae(config), config.to_dict())

    def dit(self, vae_dir: Path) -> Path:
        from hyv.training.dit import DiTTrainConfig, train_dit

        c = self.config
        config = DiTTrainConfig(
            out_dir=c.dit_run,
            bundle=c.bundle_preset,
            vae_path=vae_dir,
            steps=c.dit_steps,
            batch_size=c.dit_batch_size,
            lr=c.dit_lr,
            lr_schedule=c.dit_lr_schedule,
            unshifted_fraction=c.dit_unshifted_fraction,
            latent_norm=c.dit_latent_norm,
            train_text_encoder=c.dit_train_text_encoder,
            size=c.size,
            num_frames=c.num_frames,
            cache_videos=c.dit_cache_videos,
            cache_images=c.dit_cache_images,
            seed=c.seed,
            device=c.device,
            resume=True,
            progress=c.progress,
        ).replace(**c.dit_overrides)
        return self._run("dit", lambda: train_dit(config), config.to_dict())

    def distill(self, stage: str, teacher: Path) -> Path:
        from hyv.training.distill import DistillConfig, train_distill

        c = self.config
        changes: dict[str, Any] = dict(
            teacher=teacher,
            out_dir=c.cfg_run if stage == "cfg" else c.steps_run,
            size=c.size,
            num_frames=c.num_frames,
            seed=c.seed,
            device=c.device,
            resume=True,
            progress=c.progress,
        )
        steps = c.cfg_steps if stage == "cfg" else c.distill_steps
        if steps is not None:
            changes["steps"] = steps
        if stage == "steps":
            changes["student_steps"] = c.student_steps
        changes.update(c.cfg_overrides if stage == "cfg" else c.steps_overrides)
        config = DistillConfig.for_stage(stage, **changes)
        return self._run(stage, lambda: train_distill(config), config.to_dict())

    def export(self, student: Path) -> Path:
        c = self.config

        def write() -> Path:
            bundle = load_bundle(student, dtype=torch.float32)
            dtype = _dtype(c.export_dtype)
            bundle.dit.to(dtype)
            bundle.vae.to(dtype)
            if isinstance(bundle.text_encoder, torch.nn.Module):
                bundle.text_encoder.to(dtype)
            if c.export_dir.exists():
                shutil.rmtree(c.export_dir)
            save_bundle(bundle, c.export_dir, dit_metadata=read_dit_metadata(student / "dit"))
            self.write_recipe()
            return c.export_dir

        return self._run("export", write, {"student": str(student), "dtype": c.export_dtype})

    def evaluate(self, bundle_dir: Path, teacher: Path) -> Path:
        from hyv.training.eval.runner import EvalConfig, evaluate_bundle

        c = self.config
        config = EvalConfig(
            student=bundle_dir,
            teacher=teacher,
            out_dir=c.eval_run,
            size=c.size,
            num_frames=c.num_frames,
            samples_per_combination=c.eval_samples_per_combination,
            seed=c.seed,
            progress=c.progress,
            **c.eval_overrides,
        )

        def run() -> Path:
            evaluate_bundle(config)
            shutil.copy(c.eval_run / "eval.json", bundle_dir / "eval.json")
            return c.eval_run

        output = self._run("eval", run, {"teacher": str(teacher), "student": str(bundle_dir)})
        recipe = self.write_recipe()  # now that the eval's wall time is recorded ...
        if config.write_card:  # ... and the card, written during the eval, shows it too
            from hyv.training.eval.card import write_model_card

            results = json.loads((bundle_dir / "eval.json").read_text())
            write_model_card(bundle_dir, results, json.loads(recipe.read_text()))
        return output

    def write_recipe(self) -> Path:
        """`recipe.json` beside the weights, in the schema the model card reads (hyv.training.eval.card)."""
        c = self.config
        command = ("hyv train bundle " + _cli_args(c)).strip()
        stages = []
        for name, info in self.state["stages"].items():
            settings = info.get("settings", {})
            stages.append(
                {
                    "name": name,
                    "steps": settings.get("steps", "-"),
                    "wall_time_s": round(float(info.get("wall_s", 0.0)), 1),
                    **{k: settings[k] for k in _STAGE_DETAILS if k in settings},
                    # a stage carried over from an earlier run says which (the card shows it)
                    **({"reused_from": info["reused_from"]} if "reused_from" in info else {}),
                    "settings": settings,  # in full for the record (the card leaves it out)
                }
            )
        recipe = {
            "command": command,
            "seed": c.seed,
            "hardware": _hardware(c.device),
            "git_commit": _git_commit(c.export_dir),
            "data": "synthetic clips of hyv/training/data (train split; 44 held-out combinations never seen)",
            "total_wall_time_s": round(sum(s["wall_time_s"] for s in stages), 1),
            "stages": stages,
            "config": c.to_dict(),
        }
        path = c.export_dir / RECIPE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recipe, indent=2, default=str))
        return path

    def run(self, until: str = "eval") -> Path:
        if until not in STAGES:
            raise ValueError(f"until={until!r} must be one of {list(STAGES)}")
        last = STAGES.index(until)
        vae_dir = self.vae()
        if last < 1:
            return vae_dir
        teacher = self.dit(vae_dir)
        if last < 2:
            return teacher
        cfg_student = self.distill("cfg", teacher)
        if last < 3:
            return cfg_student
        student = self.distill("steps", cfg_student)
        if last < 4:
            return student
        exported = self.export(student)
        if last < 5:
            return exported
        self.evaluate(exported, teacher)
        return exported


# The settings a stage's row in the model card shows (recipe.json keeps them all).
_STAGE_DETAILS = (
    "preset",
    "lr",
    "video_lr",
    "lr_schedule",
    "unshifted_fraction",
    "latent_norm",
    "train_text_encoder",
    "batch_size",
    "image_batch_size",
    "student_steps",
    "teacher_steps",
)


def _hardware(device: str | None) -> str:
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible)"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.machine()}"


def _git_commit(export_dir: Path) -> str | None:
    """HEAD of the checkout the recipe ran from ("+dirty" with uncommitted changes), if it is one.
    The export directory is left out: the recipe itself rewrites it (weights/hyv-small is tracked)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
        if export_dir.resolve().is_relative_to(root):
            status.append(f":(exclude){export_dir.resolve().relative_to(root)}")
        dirty = subprocess.run(status, cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# RecipeConfig fields that `hyv train bundle` takes as options (hyv/training/cli.py), and their names.
_CLI_OPTIONS = {
    "out_dir": "--out",
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "export_dir",
            "seed",
            "device",
            "vae_steps",
            "dit_steps",
            "dit_batch_size",
            "cfg_steps",
            "distill_steps",
            "student_steps",
        )
    },
}


def _cli_args(c: RecipeConfig) -> str:
    """The options that reproduce `c` (changes the command line cannot carry are named after a #)."""
    defaults = RecipeConfig()
    args, elsewhere = [], []
    for field in dataclasses.fields(c):
        value, default = getattr(c, field.name), getattr(defaults, field.name)
        if value == default or field.name == "progress":
            continue
        if field.name in _CLI_OPTIONS:
            args.append(f"{_CLI_OPTIONS[field.name]} {value}")
        else:
            elsewhere.append(f"{field.name}={value!r}")
    return " ".join(args) + (f"  # with RecipeConfig({', '.join(elsewhere)})" if elsewhere else "")


def train_bundle(config: RecipeConfig, until: str = "eval") -> Path:
    """Run (or continue) the whole recipe; returns the last stage's output directory."""
    return Recipe(config).run(until)
