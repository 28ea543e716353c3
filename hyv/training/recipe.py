"""The bundled model's recipe: one resumable command from nothing to `weights/hyv-small`.

    hyv train bundle                      # == the stages below, each resumable

1. **vae**          `hyv.training.vae`: the causal 3D VAE on synthetic 64x64 clips (curriculum, GAN,
                    tiling phase)
2. **vae_buckets**  a decoder fine-tune on 128x128 crops mixed with 64x64 clips: the largest
                    bucket's objects and pixel motion (the encoder, so every latent, unchanged)
3. **dit**          `hyv.training.dit`: flow matching of the small DiT + built-in text encoder on its
                    latents, low resolution and short first (64x64, 17 frames and images)
4. **dit_buckets**  the paper's progressive step: the same DiT on every bucket (`buckets`: 64x64,
                    96x64, 64x96, 128x128 at 1, 17 and 33 frames; batches of one bucket, sized by a
                    token budget; the latent cache keyed by bucket), so 3D RoPE sees every position
                    range it will be asked to draw
5. **continuations** the stage-4 DiT fine-tuned on every bucket with continuation clips among its
                    video batches (`continuation_fraction`; hyv/training/data/dataset.py): clips
                    that start mid-motion or where a clip ends and run on, objects leaving or
                    outgrowing the frame, trained image-to-video from their first frame. Extending
                    a video (POST /v1/videos/extensions) is exactly that; without it the model
                    restarts the motion from its usual first frame (docs/training.md, "Ninth
                    attempt"). On by default (`tune_continuations`; `--no-tune-continuations`
                    passes the stage-4 DiT on).
6. **large**        with `tune_large` (`--tune-large`; off by default) the stage-5 DiT fine-tuned
                    on the largest bucket only (`LARGE_BUCKETS`: 128x128 x 17), which the stages on
                    every bucket leave it weakest at (docs/training.md, "Twelfth attempt");
                    otherwise the stage-5 DiT passed on. This is the teacher from here on.
7. **cfg**          `hyv.training.distill` stage cfg: true CFG distilled into the guidance embedding
                    (only with `distill_cfg=True`, `--distill-cfg`; by default it passes the
                    teacher on)
8. **steps**        `hyv.training.distill` stage steps: phased trajectory distillation to <= 6 steps
                    from the teacher's true CFG (or from the stage-7 model), so the student learns
                    guidance and few steps at once (both distillation stages on every bucket,
                    reusing the continuations stage's latent cache); with `tune_continuations`,
                    `continuation_fraction` of its video trajectories continue continuation clips
9. **export**       the student in fp16 safetensors (+ its schedule metadata) into `export_dir`, its
                    limits exactly the buckets, with `recipe.json` (commands, seeds, steps, wall time
                    per stage); then **eval** (`hyv.training.eval`, teacher = the stage-6 DiT with 50
                    steps of true CFG) writes `eval.json` and `MODEL_CARD.md` next to the weights.
                    The export also writes that teacher as a served model of its own into
                    `teacher_export_dir` (`<export_dir>-teacher`: hyv.training.teacher_export; 50
                    steps of true CFG, the student's limits, its VAE and text encoder linked).

`stage1_from` (`--stage1-from`) starts from an earlier bundle instead of stages 1 and 3: its VAE and
DiT stand in for theirs (copied into the run directory first, since the export replaces
`export_dir`), and the card says so, with the wall time its own recipe.json recorded.

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
from hyv.engine.limits import ModelLimits
from hyv.engine.lora_folder import LORA_DIR_NAME
from hyv.models import read_dit_metadata
from hyv.training.config_io import TrainConfig
from hyv.training.data.buckets import parse_buckets
from hyv.training.distill.config import DistillConfig
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.eval.runner import EvalConfig
from hyv.training.vae.config import VAETrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "recipe_state.json"
RECIPE_FILE = "recipe.json"
STAGES = (
    "vae",
    "vae_buckets",
    "dit",
    "dit_buckets",
    "continuations",
    "large",
    "cfg",
    "steps",
    "export",
    "eval",
)
# The bundled model's buckets (hyv.training.data.buckets): what it trains, is evaluated and serves at.
SIZES = ((64, 64), (96, 64), (64, 96), (128, 128))
FRAME_COUNTS = (17, 33, 1)
DEFAULT_BUCKETS = tuple(f"{w}x{h}x{f}" for f in FRAME_COUNTS for w, h in SIZES)
STAGE1_DIR = "stage1"  # where a stage1_from bundle is copied in the run directory
# The sizes the exported bundle serves (and its eval measures): every trained size.
SERVED_SIZES = SIZES
# Share of 1-frame batches in the progressive and distillation stages: at the trainers' 0.2 the
# student drew the asked shape in 84-91% of the still images against 95-98% of the clips.
IMAGE_FRACTION = 0.3


def _recipe_dit() -> DiTTrainConfig:
    """The bundled model's DiT stage: a longer, larger-batch, cosine-decayed run than the trainer's
    defaults, on per-channel standardized latents, with a third of the sigmas unshifted and the
    built-in text encoder frozen at its random init."""
    return DiTTrainConfig(
        steps=20_000,
        batch_size=16,
        lr=6e-4,
        lr_schedule="cosine",
        unshifted_fraction=0.3,
        latent_norm="per_channel",
        cache_videos=3000,
        cache_images=750,
    )


def _recipe_vae_buckets() -> VAETrainConfig:
    """A decoder fine-tune for the largest bucket: 64 px crops of 128x128 x 17 renders (objects
    twice as large, twice the pixel motion: the VAE's weakest bucket) mixed half and half with whole
    64x64 x 17 clips, so the smaller buckets are not forgotten; pixel losses only, a low learning
    rate. The encoder is frozen, so the latents, the latent cache and any DiT trained on them stay
    valid (docs/training.md, "Fourth run")."""
    return VAETrainConfig(
        steps=2500,
        lr=1e-4,
        warmup_steps=20,
        size=128,
        train_encoder=False,
        image_phase_fraction=0.0,
        low_res_batch_size=2,
        crop_size=64,
        crop_fraction=1.0,
        crop_render_sizes=(64, 128),
        tiling_fraction=0.0,
        foreground_weight=1.0,
        perceptual_weight=0.0,
        gan_weight=0.0,
        checkpoint_every=100,
        eval_clips=8,
    )


def _recipe_dit_buckets() -> DiTTrainConfig:
    """The progressive stage: every bucket, batches of ~1280 tokens (16 clips at 64x64x17, 2 at
    128x128x33), from the stage-3 DiT at a lower learning rate."""
    return DiTTrainConfig(
        steps=6000,
        batch_size=24,
        token_budget=1280,
        lr=3e-4,
        warmup_steps=200,
        lr_schedule="cosine",
        unshifted_fraction=0.3,
        latent_norm="per_channel",
        buckets=DEFAULT_BUCKETS,
        image_fraction=IMAGE_FRACTION,
        cache_videos=300,
        cache_images=300,
        checkpoint_every=250,
    )


def _recipe_continuations() -> DiTTrainConfig:
    """The extension fine-tune of the teacher: every bucket as in stage 4, 40% of the video steps
    on continuation clips (image-to-video), at a third of stage 4's learning rate. Its buckets are
    drawn as stage 4's: a draw balanced toward the large ones (`bucket_balance` 0.5, 3000 steps)
    made the teacher's 128x128 video IoU no better (docs/training.md, "Eleventh attempt")."""
    return _recipe_dit_buckets().replace(
        steps=2000, lr=1e-4, warmup_steps=50, cache_continuations=200, continuation_fraction=0.4
    )


# The largest bucket, which the stages on every bucket leave the teacher weakest at.
LARGE_BUCKETS = ("128x128x17",)


def _recipe_large() -> DiTTrainConfig:
    """The teacher's last fine-tune (with `tune_large`): 2000 steps on 128x128 x 17 clips only (no
    images, no continuations), at the continuations stage's learning rate. The teacher's shape IoU
    there rises from 0.850 to 0.872 (128x128 x 1: 0.847 -> 0.866), at the small 33-frame buckets it
    falls by up to 3 points (64x64 x 33: 0.874 -> 0.844), where the tenth run's student was 1-3
    points above its teacher (docs/training.md, "Twelfth attempt"). Drawing the stages on every
    bucket balanced toward 128x128 did not lift it ("Eleventh attempt")."""
    return _recipe_continuations().replace(
        steps=2000,
        buckets=LARGE_BUCKETS,
        image_fraction=0.0,
        continuation_fraction=0.0,
        cache_continuations=0,
        cache_images=0,
        cache_videos=300,
    )


def _recipe_distill(stage: str) -> DistillConfig:
    """A distillation stage on every bucket: ~640 tokens per batch (8 clips at 64x64x17). The step
    distillation's 2304 trajectories are the sixth run's (docs/training.md: with 1536, 128x128x33's
    shape IoU stayed under 0.85); its video buckets are drawn balanced halfway between equal steps
    and equal clips (`bucket_balance` 0.5: 128x128x33, one clip a batch, saw 8x fewer clips than
    64x64x17), over 10000 steps so that no bucket sees fewer clips than the sixth run's 7500 gave
    it but 64x64x17 (-11%)."""
    samples, steps = {"cfg": (2048, None), "steps": (2304, 10_000)}[stage]  # None: the stage's default
    return DistillConfig.for_stage(
        stage,
        steps=steps,
        buckets=DEFAULT_BUCKETS,
        token_budget=640,
        teacher_samples=samples,
        cache_images=300,
        image_fraction=IMAGE_FRACTION,
        **(
            {"continuation_fraction": 0.3, "cache_continuations": 200, "bucket_balance": 0.5}
            if stage == "steps"
            else {}
        ),
    )


# The stage configs RecipeConfig nests, each a stage's own config class.
STAGE_CONFIGS = ("vae", "vae_buckets", "dit", "dit_buckets", "continuations", "large", "cfg", "steps", "eval")
# Their fields that the recipe sets (RecipeConfig.__post_init__ and the stages' runs).
_SET_BY_RECIPE = frozenset(
    {"out_dir", "seed", "device", "size", "num_frames", "resume", "progress", "preset", "bundle"}
    | {"vae_path", "teacher", "student", "init_from", "latent_cache"}
)


@dataclass
class RecipeConfig:
    """The recipe's settings: a few that every stage shares, and each stage's own config.

    The shared ones (`out_dir`, which gives each stage its run directory, `seed`, `device`, `size`,
    `num_frames`, `progress`, `bundle_preset`, and `resume=True`) are written into the stage configs
    on construction; the directories a stage reads from an earlier one (the DiT's VAE, a teacher,
    the bundle to evaluate) when the stage runs."""

    out_dir: Path = Path("runs/bundle")
    export_dir: Path = CHECKOUT_BUNDLE_DIR
    teacher_export_dir: Path | None = None  # the served teacher; None = `<export_dir>-teacher`
    export_teacher: bool = True  # False: the export writes the student only
    seed: int = 0
    device: str | None = None
    size: int = 64
    num_frames: int = 17
    export_dtype: str = "fp16"
    bundle_preset: str = "small"  # hyv.engine.bundle preset: the DiT, VAE and text-encoder sizes
    progress: bool = True
    stage1_from: Path | None = None  # an earlier bundle standing in for stages vae and dit
    tune_vae: bool = True  # False: stage vae_buckets passes the stage-1 VAE on unchanged
    # True (how the shipped bundle was made): stage continuations fine-tunes the teacher on
    # continuation clips, so that it and its student extend videos (docs/training.md, "Ninth
    # attempt", "Tenth run"); False: it passes the stage-4 DiT on
    tune_continuations: bool = True
    # True: stage large fine-tunes the teacher on the largest bucket only (LARGE_BUCKETS); False
    # (how the shipped bundle was made): it passes the continuations stage's teacher on. Off until
    # a student distilled from that teacher is measured: the teacher gains 2 points of IoU at
    # 128x128 x 1 and x 17 and loses up to 3 at the small 33-frame buckets (docs/training.md,
    # "Twelfth attempt")
    tune_large: bool = False
    # False: stage cfg passes the stage-4 DiT on unchanged and the step distillation learns its true
    # CFG directly, guidance and steps together; True (how the shipped bundle was made): CFG is first
    # distilled into the guidance embedding, which this small DiT does poorly (docs/training.md,
    # "Fifth run")
    distill_cfg: bool = False
    # an earlier eval.json of the same teacher: the eval stage reuses its teacher results, checked
    # by regenerating one bucket (hyv.training.eval.reuse)
    teacher_results: Path | None = None
    # (width, height) of the trained buckets the export offers (and the eval measures); () = all
    serve_sizes: tuple[tuple[int, int], ...] = SERVED_SIZES
    # --- the stages' configs ---
    vae: VAETrainConfig = dataclasses.field(default_factory=VAETrainConfig)
    vae_buckets: VAETrainConfig = dataclasses.field(default_factory=_recipe_vae_buckets)
    dit: DiTTrainConfig = dataclasses.field(default_factory=_recipe_dit)
    dit_buckets: DiTTrainConfig = dataclasses.field(default_factory=_recipe_dit_buckets)
    continuations: DiTTrainConfig = dataclasses.field(default_factory=_recipe_continuations)
    large: DiTTrainConfig = dataclasses.field(default_factory=_recipe_large)
    cfg: DistillConfig = dataclasses.field(default_factory=lambda: _recipe_distill("cfg"))
    steps: DistillConfig = dataclasses.field(default_factory=lambda: _recipe_distill("steps"))
    # At every bucket of the student's bundle.json: the 44 held-out combinations twice each (one
    # clip is 1.1 points), the VAE on half of them (its metrics barely move, its decode is the
    # slowest part at 128x128x33).
    eval: EvalConfig = dataclasses.field(
        default_factory=lambda: EvalConfig(
            student=CHECKOUT_BUNDLE_DIR, samples_per_combination=2, vae_clips=22
        )
    )

    def __post_init__(self) -> None:
        self.out_dir, self.export_dir = Path(self.out_dir), Path(self.export_dir)
        self.teacher_export_dir = Path(
            self.teacher_export_dir or self.export_dir.with_name(self.export_dir.name + "-teacher")
        )
        if self.stage1_from is not None:
            self.stage1_from = Path(self.stage1_from)
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
        shared = self.shared_fields()
        vae_preset = BUNDLE_PRESETS[self.bundle_preset].vae_preset
        self.vae = self.vae.replace(out_dir=self.vae_run, preset=vae_preset, **shared)
        # The fine-tune renders at its own sizes (64 and 128): only the shared bookkeeping applies.
        tuned = {k: v for k, v in shared.items() if k not in ("size", "num_frames")}
        self.vae_buckets = self.vae_buckets.replace(
            out_dir=self.out_dir / "vae_buckets", preset=vae_preset, **tuned
        )
        self.dit = self.dit.replace(out_dir=self.dit_run, bundle=self.bundle_preset, **shared)
        self.dit_buckets = self.dit_buckets.replace(
            out_dir=self.out_dir / "dit_buckets", bundle=self.bundle_preset, **shared
        )
        self.continuations = self.continuations.replace(
            out_dir=self.out_dir / "continuations", bundle=self.bundle_preset, **shared
        )
        self.large = self.large.replace(out_dir=self.out_dir / "large", bundle=self.bundle_preset, **shared)
        self.cfg = self.cfg.replace(out_dir=self.cfg_run, **shared)
        self.steps = self.steps.replace(out_dir=self.steps_run, **shared)
        self.eval = dataclasses.replace(
            self.eval,
            out_dir=self.eval_run,
            size=self.size,
            num_frames=self.num_frames,
            seed=self.seed,
            progress=self.progress,
        )

    def shared_fields(self) -> dict[str, Any]:
        """The fields the recipe sets in every training stage's config."""
        return {
            "seed": self.seed,
            "device": self.device,
            "size": self.size,
            "num_frames": self.num_frames,
            "resume": True,
            "progress": self.progress,
        }

    def to_dict(self) -> dict[str, Any]:
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in STAGE_CONFIGS
        }
        data["out_dir"], data["export_dir"] = str(self.out_dir), str(self.export_dir)
        data["teacher_export_dir"] = str(self.teacher_export_dir)
        for name in STAGE_CONFIGS:
            data[name] = _plain(getattr(self, name))
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
        from hyv.training.vae import train_vae

        config = self.config.vae
        return self._run("vae", lambda: train_vae(config), config.to_dict())

    def vae_buckets(self, vae_dir: Path) -> Path:
        from hyv.training.vae import train_vae

        if not self.config.tune_vae:
            return self._run("vae_buckets", lambda: vae_dir, {"skipped": "tune_vae=False", "steps": 0})
        config = self.config.vae_buckets.replace(init_from=vae_dir)
        return self._run("vae_buckets", lambda: train_vae(config), config.to_dict())

    def dit(self, vae_dir: Path) -> Path:
        from hyv.training.dit import train_dit

        config = self.config.dit.replace(vae_path=vae_dir)
        return self._run("dit", lambda: train_dit(config), config.to_dict())

    def dit_buckets(self, stage1: Path, vae_dir: Path) -> Path:
        from hyv.training.dit import train_dit

        config = self.config.dit_buckets.replace(init_from=stage1, vae_path=vae_dir)
        return self._run("dit_buckets", lambda: train_dit(config), config.to_dict())

    def continuations(self, teacher: Path, vae_dir: Path) -> Path:
        """The teacher fine-tuned on continuations; the stage-4 DiT itself with 0 steps."""
        from hyv.training.dit import train_dit
        from hyv.training.dit.latents import CACHE_FILE

        config = self.config.continuations.replace(init_from=teacher, vae_path=vae_dir)
        if not self.config.tune_continuations:
            skipped = {"skipped": "tune_continuations=False", "steps": 0}
            return self._run("continuations", lambda: teacher, skipped)

        def run() -> Path:
            # Stage 4's cached clips are valid here (same VAE, data and buckets): only the
            # continuation clips are encoded.
            cache, earlier = config.out_dir / CACHE_FILE, self.config.dit_buckets.out_dir / CACHE_FILE
            if earlier.exists() and not cache.exists():
                config.out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(earlier, cache)
            return train_dit(config)

        return self._run("continuations", run, config.to_dict())

    def large(self, teacher: Path, vae_dir: Path) -> Path:
        """The teacher fine-tuned on LARGE_BUCKETS; the continuations stage's teacher itself with
        tune_large=False."""
        from hyv.training.dit import train_dit

        if not self.config.tune_large:
            return self._run("large", lambda: teacher, {"skipped": "tune_large=False", "steps": 0})
        config = self.config.large.replace(init_from=teacher, vae_path=vae_dir)
        return self._run("large", lambda: train_dit(config), config.to_dict())

    def latent_cache(self) -> Path:
        """The continuations stage's latent cache (every bucket; the progressive stage's when that
        stage is skipped), which the distillation stages reuse."""
        from hyv.training.dit.latents import CACHE_FILE

        stage = self.config.continuations if self.config.tune_continuations else self.config.dit_buckets
        return stage.out_dir / CACHE_FILE

    def distill(self, stage: str, teacher: Path) -> Path:
        from hyv.training.distill import train_distill

        if stage == "cfg" and not self.config.distill_cfg:
            skipped = {"skipped": "distill_cfg=False: stage steps learns the true CFG", "steps": 0}
            return self._run("cfg", lambda: teacher, skipped)
        config = (self.config.cfg if stage == "cfg" else self.config.steps).replace(
            teacher=teacher, latent_cache=self.latent_cache()
        )
        if not self.config.tune_continuations:  # a teacher not tuned on them continues them poorly
            config = config.replace(continuation_fraction=0.0)
        return self._run(stage, lambda: train_distill(config), config.to_dict())

    def reuse_stage1(self, bundle_dir: Path) -> None:
        """Stages vae and dit taken from an earlier bundle (copied into the run directory, since the
        export replaces export_dir), recorded with the wall time of its own recipe.json."""
        if self.state["stages"].get("dit", {}).get("finished"):
            return
        copy = self.config.out_dir / STAGE1_DIR
        if not copy.exists():
            shutil.copytree(bundle_dir, copy)
        old_recipe = json.loads((copy / RECIPE_FILE).read_text()) if (copy / RECIPE_FILE).exists() else {}
        recorded = {s["name"]: s for s in old_recipe.get("stages", [])}
        commit = old_recipe.get("git_commit")
        source = f"{bundle_dir} (recipe.json of commit {commit})" if commit else str(bundle_dir)
        for name, output in (("vae", copy / "vae"), ("dit", copy)):
            earlier = recorded.get(name, {})
            self.state["stages"][name] = {
                "finished": True,
                "output": str(output),
                "wall_s": float(earlier.get("wall_time_s", 0.0)),
                "settings": earlier.get("settings", {}),
                "reused_from": source,
            }
        self._save_state()

    def export(self, student: Path, teacher: Path | None = None) -> Path:
        """The student into export_dir; with `teacher` (and export_teacher) the teacher too."""
        c = self.config

        def write() -> Path:
            bundle = load_bundle(student, dtype=torch.float32)
            # The preset's name whatever bundle the stages started from (one carried over from a
            # served teacher is named after it).
            bundle.spec = bundle.spec.with_trained_dit(
                name=BUNDLE_PRESETS[c.bundle_preset].name, limits=bucket_limits(bundle.spec.limits, c)
            )
            dtype = _dtype(c.export_dtype)
            bundle.dit.to(dtype)
            bundle.vae.to(dtype)
            if isinstance(bundle.text_encoder, torch.nn.Module):
                bundle.text_encoder.to(dtype)
            _clear_export_dir(c.export_dir)
            save_bundle(bundle, c.export_dir, dit_metadata=read_dit_metadata(student / "dit"))
            if teacher is not None and c.export_teacher:
                from hyv.training.teacher_export import export_teacher

                assert c.teacher_export_dir is not None
                export_teacher(
                    teacher, c.export_dir, c.teacher_export_dir, dtype=c.export_dtype, share_with=c.export_dir
                )
            self.write_recipe()
            return c.export_dir

        settings = {"student": str(student), "dtype": c.export_dtype}
        if teacher is not None and c.export_teacher:
            settings["teacher"] = str(teacher)
            settings["teacher_export_dir"] = str(c.teacher_export_dir)
        return self._run("export", write, settings)

    def evaluate(self, bundle_dir: Path, teacher: Path) -> Path:
        from hyv.training.eval.runner import evaluate_bundle

        c = self.config
        config = dataclasses.replace(
            c.eval, student=bundle_dir, teacher=teacher, teacher_results=c.teacher_results
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
        teacher_export = c.teacher_export_dir
        if c.export_teacher and teacher_export is not None and (teacher_export / "MODEL_CARD.md").exists():
            from hyv.training.teacher_export import write_teacher_card

            write_teacher_card(teacher_export, teacher, bundle_dir, c.export_dtype)  # now with its accuracy
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
        if self.config.stage1_from is not None:
            self.reuse_stage1(self.config.stage1_from)
        vae_dir = self.vae()
        if last < 1:
            return vae_dir
        tuned_vae = self.vae_buckets(vae_dir)
        if last < 2:
            return tuned_vae
        stage1 = self.dit(vae_dir)
        if last < 3:
            return stage1
        progressive = self.dit_buckets(stage1, tuned_vae)
        if last < 4:
            return progressive
        continued = self.continuations(progressive, tuned_vae)
        if last < 5:
            return continued
        teacher = self.large(continued, tuned_vae)
        if last < 6:
            return teacher
        cfg_student = self.distill("cfg", teacher)
        if last < 7:
            return cfg_student
        student = self.distill("steps", cfg_student)
        if last < 8:
            return student
        exported = self.export(student, teacher)
        if last < 9:
            return exported
        self.evaluate(exported, teacher)
        return exported


def _clear_export_dir(export_dir: Path) -> None:
    """Empty the export directory for a new bundle, except its LoRA folder: adapters are trained
    separately (`hyv train lora`), so they are kept, with a warning that they were trained on the
    weights being replaced."""
    if not export_dir.exists():
        return
    for entry in export_dir.iterdir():
        if entry.name == LORA_DIR_NAME and entry.is_dir():
            if any(entry.iterdir()):
                logger.warning(
                    "kept the LoRA adapters in %s: they were trained on the previous weights; retrain "
                    "them on the new bundle (hyv train lora, docs/training.md)",
                    entry,
                )
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def bucket_limits(limits: ModelLimits, config: RecipeConfig) -> ModelLimits:
    """The exported bundle's limits: exactly the sizes (those of `serve_sizes`) and frame counts of
    the buckets it was trained at (and is evaluated at), the default the first video bucket."""
    buckets = parse_buckets(config.dit_buckets.buckets)
    if config.serve_sizes:
        buckets = tuple(b for b in buckets if (b.width, b.height) in config.serve_sizes)
        if not buckets:
            raise ValueError(f"RecipeConfig.serve_sizes={config.serve_sizes} names no trained bucket")
    sizes = tuple(dict.fromkeys((b.width, b.height) for b in buckets))
    frames = tuple(sorted({b.frames for b in buckets}))
    first = next(b for b in buckets if not b.is_image)
    return dataclasses.replace(
        limits,
        width=first.width,
        height=first.height,
        num_frames=first.frames,
        max_width=max(w for w, _ in sizes),
        max_height=max(h for _, h in sizes),
        max_frames=max(frames),
        buckets=sizes,
        frame_counts=frames,
    )


# The settings a stage's row in the model card shows (recipe.json keeps them all).
_STAGE_DETAILS = (
    "skipped",
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
    root = Path(__file__).resolve().parents[2]  # a checkout's root (hyv/training/recipe.py)
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


# The options of `hyv train bundle` (hyv/training/cli.py), each the RecipeConfig field it sets
# ("stage.field": a field of a stage's config). The command builds its config with `from_options`.
BUNDLE_OPTIONS: dict[str, str] = {
    "out": "out_dir",
    "export_dir": "export_dir",
    "seed": "seed",
    "device": "device",
    "vae_steps": "vae.steps",
    "dit_steps": "dit.steps",
    "dit_batch_size": "dit.batch_size",
    "cfg_steps": "cfg.steps",
    "distill_steps": "steps.steps",
    "student_steps": "steps.student_steps",
    "distill_samples": "steps.teacher_samples",
    "distill_bucket_balance": "steps.bucket_balance",
    "bucket_steps": "dit_buckets.steps",
    "continuation_steps": "continuations.steps",
    "large_steps": "large.steps",
    "stage1_from": "stage1_from",
    "tune_vae": "tune_vae",
    "tune_continuations": "tune_continuations",
    "tune_large": "tune_large",
    "distill_cfg": "distill_cfg",
    "teacher_results": "teacher_results",
}
# RecipeConfig field -> its option on the command line
_CLI_OPTIONS = {path: "--" + name.replace("_", "-") for name, path in BUNDLE_OPTIONS.items()}


def option_defaults() -> dict[str, Any]:
    """The default of each `hyv train bundle` option: the RecipeConfig default of the field it sets."""
    defaults = RecipeConfig()
    return {name: _get(defaults, path) for name, path in BUNDLE_OPTIONS.items()}


def from_options(**options: Any) -> RecipeConfig:
    """A RecipeConfig from `hyv train bundle`'s options (by parameter name; None: the default)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        if value is None:
            continue
        path = BUNDLE_OPTIONS[name]
        if "." in path:
            stage, field = path.split(".")
            nested.setdefault(stage, {})[field] = value
        else:
            top[path] = value
    defaults = RecipeConfig()
    stages = {stage: getattr(defaults, stage).replace(**fields) for stage, fields in nested.items()}
    return RecipeConfig(**top, **stages)


def _get(config: RecipeConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _plain(config: Any) -> dict[str, Any]:
    if isinstance(config, TrainConfig):
        return config.to_dict()
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}


def _changes(c: RecipeConfig) -> list[tuple[str, Any]]:
    """(field path, value) of every setting of `c` that differs from the defaults, in field order.

    The fields the recipe writes into the stage configs are named once, at the top level."""
    defaults = RecipeConfig()
    changes = []
    for field in dataclasses.fields(c):
        value, default = getattr(c, field.name), getattr(defaults, field.name)
        if field.name not in STAGE_CONFIGS:
            if value != default:
                changes.append((field.name, value))
            continue
        for inner in dataclasses.fields(value):
            mine = getattr(value, inner.name)
            if inner.name not in _SET_BY_RECIPE and mine != getattr(default, inner.name):
                changes.append((f"{field.name}.{inner.name}", mine))
    return changes


def _cli_args(c: RecipeConfig) -> str:
    """The options that reproduce `c` (changes the command line cannot carry are named after a #)."""
    args, elsewhere = [], []
    for path, value in _changes(c):
        if path == "progress":
            continue
        if path in _CLI_OPTIONS and isinstance(value, bool):  # typer's --flag / --no-flag
            args.append(_CLI_OPTIONS[path] if value else "--no-" + _CLI_OPTIONS[path][2:])
        elif path in _CLI_OPTIONS:
            args.append(f"{_CLI_OPTIONS[path]} {value}")
        else:
            elsewhere.append(f"{path}={value!r}")
    return " ".join(args) + (f"  # with RecipeConfig({', '.join(elsewhere)})" if elsewhere else "")


def train_bundle(config: RecipeConfig, until: str = "eval") -> Path:
    """Run (or continue) the whole recipe; returns the last stage's output directory."""
    return Recipe(config).run(until)
