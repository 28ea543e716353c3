"""The whole bundle recipe (`hyv train bundle`) at tiny sizes: every stage runs and trains, the
exported bundle serves through the pipeline with the student's schedule, fp16 weights and the
recipe + model card beside them, and a second run skips the finished stages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from hyv.engine.bundle import read_bundle_spec
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY, PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.models import read_dit_metadata
from hyv.training.distill import DistillConfig
from hyv.training.distill.common import CFG_DISTILLED_KEY
from hyv.training.dit import DiTTrainConfig
from hyv.training.dit.latents import CACHE_FILE
from hyv.training.eval.runner import EvalConfig
from hyv.training.recipe import (
    DEFAULT_BUCKETS,
    RECIPE_FILE,
    STAGES,
    STATE_FILE,
    Recipe,
    RecipeConfig,
    _cli_args,
    bucket_limits,
    train_bundle,
)
from hyv.training.vae import VAETrainConfig

SIZE, FRAMES = 32, 5

_VAE: dict[str, Any] = dict(
    steps=6,
    batch_size=2,
    low_res_size=16,
    low_res_frames=5,
    low_res_batch_size=2,
    crop_size=16,
    crop_fraction=0.0,
    image_phase_fraction=0.34,  # 2 steps of images, then the temporal kernels are folded
    image_batch_size=2,
    low_res_fraction=0.0,
    tiling_fraction=0.34,
    tiling_probability=1.0,
    tile_size=16,
    tile_frames=4,
    tile_overlap=0.0,
    max_frame_interval=4,
    warmup_steps=1,
    gan_start=3,
    checkpoint_every=100,
    scale_clips=2,
    eval_clips=2,
    dataset_length=64,
)
_DIT: dict[str, Any] = dict(warmup_steps=1, checkpoint_every=100, dataset_length=64, lr=1e-3)
_DISTILL: dict[str, Any] = dict(
    steps=4,
    batch_size=2,
    warmup_steps=1,
    dataset_length=64,
    cache_videos=4,
    cache_images=2,
    teacher_samples=4,
    eval_samples=2,
    teacher_batch=4,
    checkpoint_every=100,
)


BUCKETS = (f"{SIZE}x{SIZE}x{FRAMES}", f"{SIZE + 16}x{SIZE}x{FRAMES}", f"{SIZE}x{SIZE}x1")
_VAE_BUCKETS: dict[str, Any] = {
    **_VAE,
    "steps": 4,
    "size": SIZE,
    "train_encoder": False,
    "image_phase_fraction": 0.0,
    "low_res_fraction": 0.5,
    "crop_fraction": 0.5,
    "tiling_fraction": 0.0,
    "gan_weight": 0.0,
}


def _config(tmp_path: Path, **changes: Any) -> RecipeConfig:
    defaults = RecipeConfig()
    return RecipeConfig(
        out_dir=tmp_path / "runs",
        export_dir=tmp_path / "bundle",
        bundle_preset="tiny",
        size=SIZE,
        num_frames=FRAMES,
        progress=False,
        vae=VAETrainConfig(**_VAE),
        vae_buckets=VAETrainConfig(**_VAE_BUCKETS),
        dit=defaults.dit.replace(steps=4, batch_size=2, cache_videos=4, cache_images=2, **_DIT),
        dit_buckets=defaults.dit_buckets.replace(
            steps=4, batch_size=2, token_budget=16, buckets=BUCKETS, cache_videos=4, cache_images=2, **_DIT
        ),
        continuations=defaults.continuations.replace(
            steps=4,
            batch_size=2,
            token_budget=16,
            buckets=BUCKETS,
            cache_videos=4,
            cache_images=2,
            cache_continuations=2,
            continuation_fraction=0.5,
            **_DIT,
        ),
        large=defaults.large.replace(
            steps=4, batch_size=2, token_budget=16, buckets=BUCKETS[:1], cache_videos=4, **_DIT
        ),
        cfg=DistillConfig.for_stage("cfg", **_DISTILL, buckets=BUCKETS, token_budget=16),
        steps=DistillConfig.for_stage(
            "steps",
            **_DISTILL,
            buckets=BUCKETS,
            token_budget=16,
            student_steps=2,
            teacher_steps=4,
            continuation_fraction=0.5,
            cache_continuations=2,
        ),
        eval=EvalConfig(
            student=tmp_path / "bundle",
            samples_per_combination=2,
            combinations=2,
            teacher_steps=4,
            batch_size=2,
            sheet_clips=2,
            teacher_guidance=2.0,
        ),
        **{"serve_sizes": (), **changes},
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_the_whole_recipe_at_tiny_sizes(tmp_path: Path) -> None:
    # every stage (the defaults pass stages large and cfg over)
    config = _config(tmp_path, distill_cfg=True, tune_large=True)
    # An earlier bundle in export_dir: the export replaces it but keeps its LoRA folder.
    (config.export_dir / "loras").mkdir(parents=True)
    (config.export_dir / "loras" / "kept.safetensors").write_bytes(b"adapter")
    (config.export_dir / "stale.json").write_text("{}")
    exported = train_bundle(config)
    assert exported == config.export_dir
    assert (exported / "loras" / "kept.safetensors").read_bytes() == b"adapter"
    assert not (exported / "stale.json").exists()

    state = json.loads((config.out_dir / STATE_FILE).read_text())
    assert list(state["stages"]) == list(STAGES)
    assert all(stage["finished"] and stage["wall_s"] > 0 for stage in state["stages"].values())
    # The teacher is the largest-bucket fine-tune of the continuation fine-tune of the progressive
    # stage's DiT, which reused that stage's latent cache (adding its continuation clips), as did
    # the distillation.
    tuned = state["stages"]["continuations"]
    assert tuned["settings"]["init_from"] == state["stages"]["dit_buckets"]["output"]
    large = state["stages"]["large"]
    assert large["settings"]["init_from"] == tuned["output"] and large["settings"]["buckets"] == [BUCKETS[0]]
    assert state["stages"]["cfg"]["settings"]["teacher"] == large["output"]
    cache = config.continuations.out_dir / CACHE_FILE
    assert state["stages"]["steps"]["settings"]["latent_cache"] == str(cache)
    assert state["stages"]["steps"]["settings"]["continuation_fraction"] == 0.5
    cached = torch.load(cache, weights_only=False)["chunks"]
    assert sorted(cached) == sorted([*BUCKETS, *(f"{b}+continuations" for b in BUCKETS[:2])])

    # Every trainer left a loss curve; each went down from its first steps.
    runs = (config.vae_buckets.out_dir, config.dit_buckets.out_dir, config.continuations.out_dir)
    runs = (*runs, config.large.out_dir, config.cfg_run, config.steps_run)
    for run in (config.vae_run, config.dit_run, *runs):
        assert (run / "loss.png").is_file() and (run / "losses.csv").is_file(), run

    # The export: fp16 weights, the student's schedule, its defaults, served by the pipeline.
    spec = read_bundle_spec(exported)
    assert spec.trained and spec.limits.steps == 2
    # Its limits are exactly the buckets it was trained at; the default is the first video bucket.
    assert spec.limits.buckets == ((SIZE, SIZE), (SIZE + 16, SIZE)) and spec.limits.frame_counts == (
        1,
        FRAMES,
    )
    assert (spec.limits.width, spec.limits.height, spec.limits.num_frames) == (SIZE, SIZE, FRAMES)
    sigmas = json.loads(read_dit_metadata(exported / "dit")[SCHEDULE_METADATA_KEY])
    assert len(sigmas) == 3 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    dit_weights = exported / "dit" / "model.safetensors"
    with safe_open(str(dit_weights), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in list(handle.keys())[:5]} == {torch.float16}
    pipeline = VideoPipeline.from_dir(exported, PipelineOptions())
    request = GenerationRequest(prompt="a red circle moving left on a black background", seed=1)
    frames = read_mp4(pipeline.generate(request).mp4)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)

    # The teacher (stage 4's DiT) exported beside the student as a served model: the student's
    # sizes and lengths, 50 steps, true CFG (its idle guidance embedding dropped), fp16, the
    # student's VAE and text encoder linked, and a card.
    teacher_dir = config.teacher_export_dir
    assert teacher_dir == tmp_path / "bundle-teacher"
    teacher_spec = read_bundle_spec(teacher_dir)
    assert teacher_spec.name == "hyv-tiny-teacher" and teacher_spec.limits.steps == 50
    assert teacher_spec.limits.buckets == spec.limits.buckets
    assert teacher_spec.limits.frame_counts == spec.limits.frame_counts
    assert json.loads((teacher_dir / "dit" / "config.json").read_text())["guidance_embed"] is False
    assert SCHEDULE_METADATA_KEY not in read_dit_metadata(teacher_dir / "dit")
    assert (teacher_dir / "vae").is_symlink() and (teacher_dir / "vae").resolve() == (
        exported / "vae"
    ).resolve()
    teacher_card = (teacher_dir / "MODEL_CARD.md").read_text()
    assert "# hyv-tiny-teacher" in teacher_card
    # written again after the eval: the teacher's accuracy from the student's eval.json
    assert "judged accuracy over 16 clips" in teacher_card and "no teacher results" not in teacher_card
    assert state["stages"]["export"]["settings"]["teacher_export_dir"] == str(teacher_dir)
    teacher = VideoPipeline.from_dir(teacher_dir, PipelineOptions())
    taught = teacher.generate(
        GenerationRequest(prompt="a red circle moving left on a black background", seed=1, steps=3)
    )
    assert read_mp4(taught.mp4).shape == (FRAMES, SIZE, SIZE, 3) and taught.summary()["steps"] == 3

    # Recipe, eval and model card beside the weights.
    recipe = json.loads((exported / RECIPE_FILE).read_text())
    assert recipe["command"].startswith("hyv train bundle")
    names = [stage["name"] for stage in recipe["stages"]]
    assert names == list(STAGES)
    # every training stage and the eval took time (the export of a tiny bundle rounds to 0.0 s)
    assert all(stage["wall_time_s"] > 0 for stage in recipe["stages"] if stage["name"] != "export")
    stage_sum = sum(stage["wall_time_s"] for stage in recipe["stages"])
    assert recipe["total_wall_time_s"] >= stage_sum - 1e-6  # both rounded to 0.1 s: float sums differ
    assert recipe["git_commit"] and "CPU" in recipe["hardware"]
    results = json.loads((exported / "eval.json").read_text())
    assert 0.0 <= results["student"]["accuracy"]["color"] <= 1.0
    card = (exported / "MODEL_CARD.md").read_text()
    assert "PSNR" in card and "hyv train bundle" in card
    assert re.search(r"\| vae \| 6 \| \d+\.\d min \| - \| preset=tiny, lr=0.0005, video_lr=0.0002", card)
    assert re.search(r"\| eval \| - \| \d+\.\d min \|", card)  # the eval's own time, as in recipe.json
    assert f"Total wall time: {recipe['total_wall_time_s'] / 60:.1f} min" in card

    dit_settings = state["stages"]["dit"]["settings"]
    assert dit_settings["lr_schedule"] == "cosine"  # the recipe's DiT decays
    assert dit_settings["latent_norm"] == "per_channel" and dit_settings["unshifted_fraction"] == 0.3
    # The per-channel latent statistics the DiT was trained with are in the served VAE's config
    # (the distilled student and the teacher share them).
    vae_config = pipeline.vae.config
    assert vae_config.latents_mean is not None and vae_config.latents_std is not None
    teacher_vae = json.loads((config.dit_buckets.out_dir / "bundle" / "vae" / "config.json").read_text())
    assert teacher_vae["latents_std"] == pytest.approx(list(vae_config.latents_std), rel=1e-3)
    assert re.search(r"latent_norm=per_channel", card)

    # Running it again finds every stage finished: nothing is retrained.
    before = {p: p.stat().st_mtime for p in exported.rglob("*.safetensors")}
    Recipe(config).run()
    assert {p: p.stat().st_mtime for p in exported.rglob("*.safetensors")} == before

    # A stage carried over from an earlier run says so in recipe.json (the card's details column).
    state["stages"]["vae"]["reused_from"] = "the VAE of an earlier run"
    (config.out_dir / STATE_FILE).write_text(json.dumps(state))
    Recipe(config).write_recipe()
    stages = json.loads((exported / RECIPE_FILE).read_text())["stages"]
    assert stages[0]["reused_from"] == "the VAE of an earlier run"
    assert all("reused_from" not in stage for stage in stages[1:])

    # An earlier bundle standing in for stages vae and dit (--stage1-from): copied into the run
    # directory (the export replaces export_dir), recorded as reused with its recipe's wall times,
    # and the progressive stage trains from it.
    again = _config(tmp_path / "again", stage1_from=exported)
    Recipe(again).run(until="dit_buckets")
    redone = json.loads((again.out_dir / STATE_FILE).read_text())["stages"]
    assert redone["vae"]["reused_from"].startswith(str(exported))
    assert redone["dit"]["output"] == str(again.out_dir / "stage1") and redone["dit"]["wall_s"] > 0
    assert redone["dit_buckets"]["finished"] and "reused_from" not in redone["dit_buckets"]


def test_the_export_serves_the_trained_buckets_of_serve_sizes(tmp_path: Path) -> None:
    config = _config(tmp_path, serve_sizes=((SIZE + 16, SIZE),))
    limits = bucket_limits(read_bundle_spec(DEFAULT_BUNDLE_DIR).limits, config)
    # only 48x32's buckets: its videos (the image bucket is 32x32's)
    assert limits.buckets == ((SIZE + 16, SIZE),) and limits.frame_counts == (FRAMES,)
    assert (limits.width, limits.height, limits.max_width, limits.max_frames) == (
        SIZE + 16,
        SIZE,
        SIZE + 16,
        FRAMES,
    )
    with pytest.raises(ValueError, match="serve_sizes"):
        bucket_limits(limits, _config(tmp_path, serve_sizes=((512, 512),)))


def test_recipe_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="student_steps"):
        RecipeConfig(out_dir=tmp_path, steps=DistillConfig.for_stage("steps", student_steps=8))
    with pytest.raises(ValueError, match="bundle_preset"):
        RecipeConfig(out_dir=tmp_path, bundle_preset="hunyuan-video-13b")
    with pytest.raises(ValueError, match="until"):
        Recipe(RecipeConfig(out_dir=tmp_path)).run(until="deploy")


def test_the_recorded_command_uses_only_options_the_cli_has(tmp_path: Path) -> None:
    """`recipe.json`'s command must run: its option names come from BUNDLE_OPTIONS, the table that
    `hyv train bundle` (hyv/training/cli.py) builds its config with."""
    import typer

    from hyv.cli import app
    from hyv.training.recipe import _CLI_OPTIONS, _cli_args

    group: Any = typer.main.get_command(app)  # a click group (typer may vendor its own click)
    bundle_command = group.commands["train"].commands["bundle"]
    bundle_options = {opt for param in bundle_command.params for opt in param.opts}
    assert "--out" in bundle_options and "--until" in bundle_options
    assert set(_CLI_OPTIONS.values()) <= bundle_options
    config = RecipeConfig(out_dir=tmp_path / "r", dit=RecipeConfig().dit.replace(steps=7), size=32)
    args = _cli_args(config)
    assert args.startswith(f"--out {tmp_path / 'r'} --dit-steps 7")
    assert args.endswith("# with RecipeConfig(size=32)")  # not an option: named, not invented
    flag = _cli_args(RecipeConfig(out_dir=tmp_path / "r", tune_vae=False))
    negatives = {opt for param in bundle_command.params for opt in getattr(param, "secondary_opts", [])}
    assert flag.endswith("--no-tune-vae") and "--no-tune-vae" in negatives  # a flag, as typed


def test_bundle_options_are_the_table_and_default_to_the_config() -> None:
    """Every `hyv train bundle` option but --until sets the RecipeConfig field BUNDLE_OPTIONS names,
    and its default is that field's default (None: the stage config's own)."""
    import typer

    from hyv.cli import app
    from hyv.training.recipe import BUNDLE_OPTIONS, from_options, option_defaults

    group: Any = typer.main.get_command(app)
    params = {p.name: p.default for p in group.commands["train"].commands["bundle"].params}
    assert set(params) - {"until"} == set(BUNDLE_OPTIONS)
    defaults = option_defaults()
    for name, default in params.items():
        if name != "until" and default is not None:
            assert default == defaults[name], name
    config = from_options(dit_steps=7, student_steps=2, vae_steps=None)
    assert config.dit.steps == 7 and config.steps.student_steps == 2
    assert config.vae.steps == VAETrainConfig().steps and config.dit.lr == RecipeConfig().dit.lr


def test_stage_configs_get_the_shared_settings(tmp_path: Path) -> None:
    config = RecipeConfig(out_dir=tmp_path, seed=3, size=32, num_frames=9, progress=False)
    for stage in (config.vae, config.dit, config.cfg, config.steps):
        assert (stage.seed, stage.size, stage.num_frames, stage.resume, stage.progress) == (
            3,
            32,
            9,
            True,
            False,
        )
    assert config.dit.out_dir == config.dit_run and config.steps.out_dir == config.steps_run
    assert config.dit.latent_norm == "per_channel" and config.eval.samples_per_combination == 2
    assert config.eval.vae_clips == 22 and config.dit_buckets.buckets == DEFAULT_BUCKETS
    assert isinstance(config.dit, DiTTrainConfig)
    assert json.loads(json.dumps(config.to_dict()))["dit"]["steps"] == 20_000


def test_without_cfg_distillation_the_steps_stage_learns_the_true_cfg_teacher(tmp_path: Path) -> None:
    """Also: without the continuation and largest-bucket fine-tunes the progressive stage's DiT is
    the teacher."""
    config = _config(tmp_path, tune_continuations=False)  # and the defaults tune_large=distill_cfg=False
    assert not config.tune_large
    assert not config.distill_cfg
    student = train_bundle(config, until="steps")
    state = json.loads((config.out_dir / STATE_FILE).read_text())["stages"]
    teacher = state["dit_buckets"]["output"]
    assert state["continuations"]["output"] == teacher and state["continuations"]["settings"]["steps"] == 0
    assert not config.continuations.out_dir.exists()
    assert state["large"]["output"] == teacher and "tune_large=False" in state["large"]["settings"]["skipped"]
    assert not config.large.out_dir.exists()
    assert config.steps.continuation_fraction == 0.5  # configured, but not distilled from this teacher
    assert state["steps"]["settings"]["continuation_fraction"] == 0.0
    assert state["cfg"]["output"] == teacher and state["cfg"]["settings"]["steps"] == 0
    assert "distill_cfg=False" in state["cfg"]["settings"]["skipped"]
    assert not config.cfg_run.exists()  # nothing trained there
    assert state["steps"]["settings"]["teacher"] == teacher and state["steps"]["finished"]
    metadata = read_dit_metadata(student / "dit")
    assert metadata[CFG_DISTILLED_KEY] == "1" and len(json.loads(metadata[SCHEDULE_METADATA_KEY])) == 3
    assert "distill-cfg" not in _cli_args(config)  # the default

    # A student whose stages started from a served teacher carries that bundle's name and step-cache
    # coefficients: the export names it after the preset and drops the coefficients.
    spec_file = student / "bundle.json"
    spec = json.loads(spec_file.read_text())
    spec.update(name="hyv-tiny-teacher", step_cache_coefficients=[1.0, 0.0])
    spec_file.write_text(json.dumps(spec))
    exported = read_bundle_spec(train_bundle(config, until="export"))
    assert exported.name == "hyv-tiny" and exported.step_cache_coefficients is None
    assert "--distill-cfg" in _cli_args(_config(tmp_path, distill_cfg=True)).split()
    assert "--no-tune-continuations" in _cli_args(config).split()
    assert "tune-large" not in _cli_args(config)  # the default
    assert "--tune-large" in _cli_args(_config(tmp_path, tune_large=True)).split()
    assert "tune-continuations" not in _cli_args(_config(tmp_path, tune_continuations=True))  # the default
