"""Distillation (hyv/training/distill) on the tiny bundle at 32x32x5: the CFG student reproduces the
teacher's true CFG in one forward, the step student follows the teacher's trajectory in 2 steps,
both bundles load and serve, the pipeline picks up the distilled schedule, resume is exact."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hyv.engine.bundle import init_random_bundle, load_bundle, read_bundle_spec, save_bundle
from hyv.engine.bundle_spec import GUIDANCE_MODE_METADATA_KEY
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY, Progress, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.sampling import flow_schedule
from hyv.models import HunyuanVideoDiT, load_dit, read_dit_metadata
from hyv.service.api.validation import ServedModel
from hyv.training.distill import METRICS_FILE, CFGDistiller, DistillConfig, StepDistiller
from hyv.training.distill.cli import stage_configs
from hyv.training.distill.common import CFG_DISTILLED_KEY, image_condition, select, with_continuations
from hyv.training.dit import list_checkpoints

SIZE, FRAMES = 32, 5
VIDEO, IMAGE = f"{SIZE}x{SIZE}x{FRAMES}", f"{SIZE}x{SIZE}x1"  # the bucket names of the teacher pools


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T2V+I2V teacher as base training leaves it: guidance embedding output zeroed."""
    bundle = init_random_bundle("tiny", seed=0)
    torch.manual_seed(0)
    bundle.dit = HunyuanVideoDiT(bundle.dit.config.replace(image_condition="latent_concat"))
    assert bundle.dit.guidance_in is not None
    out_layer = bundle.dit.guidance_in.mlp[-1]
    assert isinstance(out_layer, nn.Linear)
    nn.init.zeros_(out_layer.weight)
    nn.init.zeros_(out_layer.bias)
    return save_bundle(bundle, tmp_path_factory.mktemp("teacher") / "bundle")


def _config(stage: str, teacher: Path, out_dir: Path, **changes: object) -> DistillConfig:
    base: dict[str, object] = dict(
        teacher=teacher,
        out_dir=out_dir,
        steps=40,
        batch_size=4,
        lr=2e-3,
        warmup_steps=2,
        lr_schedule="constant",
        ema_decay=0.9,
        num_frames=FRAMES,
        size=SIZE,
        dataset_length=64,
        cache_videos=8,
        cache_images=4,
        teacher_samples=24,
        eval_samples=8,
        teacher_batch=8,
        student_steps=2,
        teacher_steps=8,
        checkpoint_every=100,
        progress=False,
    )
    base.update(changes)
    return DistillConfig(stage=stage, **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cfg_run(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CFGDistiller, Path]:
    trainer = CFGDistiller(_config("cfg", teacher_dir, tmp_path_factory.mktemp("cfg"), steps=80))
    return trainer, trainer.train()


@pytest.fixture(scope="module")
def steps_run(
    cfg_run: tuple[CFGDistiller, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[StepDistiller, Path]:
    trainer = StepDistiller(_config("steps", cfg_run[1], tmp_path_factory.mktemp("steps"), steps=60))
    return trainer, trainer.train()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stage", "dmd"),
        ("student_steps", 8),
        ("teacher_steps", 7),  # not a multiple of student_steps=2
        ("num_frames", 6),
        ("lr", 0.0),
        ("i2v_fraction", 1.5),
        ("guidance_min", -1.0),
        ("bucket_balance", 1.5),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=field):
        if field == "stage":
            _config(str(value), tmp_path, tmp_path)
        else:
            _config("cfg", tmp_path, tmp_path, **{field: value})


def test_stage_defaults_and_chain(tmp_path: Path) -> None:
    cfg, steps = stage_configs(tmp_path / "teacher", tmp_path / "out", "both", lr=None)
    assert (cfg.stage, cfg.steps, cfg.teacher_samples) == ("cfg", 1500, 2048)
    assert (steps.stage, steps.steps, steps.teacher_samples) == ("steps", 2000, 768)
    assert steps.teacher == cfg.out_dir / "bundle"  # the steps stage distills the CFG student
    assert cfg.guidance_range(6.0) == (1.0, 8.0)
    assert steps.guidance_range(6.0) == (6.0, 6.0)
    assert steps.student_steps <= 6 and steps.teacher_steps % steps.student_steps == 0


def test_image_condition_matches_the_pipeline() -> None:
    first = torch.randn(3, 16, 1, 4, 4)
    cond = image_condition(first, torch.tensor([True, False, True]), frames=2)  # (3, 17, 2, 4, 4)
    assert cond.shape == (3, 17, 2, 4, 4)
    assert torch.equal(cond[0, :16, :1], first[0]) and torch.all(cond[0, 16, 0] == 1)
    assert torch.all(cond[1] == 0)  # T2V: all zero
    assert torch.all(cond[:, :, 1:] == 0)
    assert torch.all(image_condition(first, torch.ones(3, dtype=torch.bool), frames=1) == 0)  # images


# --- stage 1: CFG distillation -------------------------------------------------------------------


def test_cfg_loss_goes_down(cfg_run: tuple[CFGDistiller, Path]) -> None:
    trainer, _ = cfg_run
    losses = trainer.losses
    assert len(losses) == 80
    assert _mean(losses[-8:]) < 0.6 * _mean(losses[:8])
    assert (trainer.out_dir / "loss.png").stat().st_size > 0
    assert len((trainer.out_dir / "losses.csv").read_text().splitlines()) == 81


def test_cfg_student_reproduces_teacher_cfg(cfg_run: tuple[CFGDistiller, Path]) -> None:
    trainer, bundle_dir = cfg_run
    metrics = json.loads((trainer.out_dir / METRICS_FILE).read_text())
    # Before: the zeroed embedding ignores g (the student predicts v_cond); after: much closer to CFG.
    assert metrics["after"] < 0.6 * metrics["before"], metrics
    student = load_dit(bundle_dir / "dit")
    assert student.guidance_in is not None
    out_layer = student.guidance_in.mlp[-1]
    assert isinstance(out_layer, nn.Linear)
    assert out_layer.weight.abs().sum() > 0  # the embedding learned something
    # The loaded student's error on the held-out set is the reported one.
    assert trainer.evaluate(student) == pytest.approx(metrics["after"], rel=1e-4)
    # g matters now: the prediction changes with the guidance scale.
    rows = select(trainer.eval_pool[VIDEO], [0, 1], trainer.device)
    low = trainer._predict(student, rows, torch.full((2,), 1.0))
    high = trainer._predict(student, rows, torch.full((2,), 8.0))
    assert (high - low).abs().mean() > 1e-3


def test_cfg_bundle_round_trips(cfg_run: tuple[CFGDistiller, Path]) -> None:
    _, bundle_dir = cfg_run
    bundle = load_bundle(bundle_dir)
    assert bundle.spec.trained
    assert bundle.dit.config.image_condition == "latent_concat"
    metadata = read_dit_metadata(bundle_dir / "dit")
    assert metadata[CFG_DISTILLED_KEY] == "1"
    assert json.loads(metadata["distill_guidance_range"]) == [1.0, 8.0]
    assert SCHEDULE_METADATA_KEY not in metadata  # CFG distillation keeps the teacher's schedule


# --- stage 2: step distillation ------------------------------------------------------------------


def test_steps_student_follows_teacher(steps_run: tuple[StepDistiller, Path]) -> None:
    trainer, _ = steps_run
    assert trainer.teacher_metadata[CFG_DISTILLED_KEY] == "1"  # distilled from the CFG student
    assert _mean(trainer.losses[-10:]) < 0.6 * _mean(trainer.losses[:10])
    metrics = json.loads((trainer.out_dir / METRICS_FILE).read_text())
    assert metrics["after"] < 0.7 * metrics["before"], metrics
    # The trajectories hold the student's phase boundaries: teacher_steps / student_steps apart.
    assert trainer.pools[VIDEO]["states"].shape[1:3] == (3, 16)
    assert IMAGE in trainer.pools


def test_steps_bundle_carries_schedule(steps_run: tuple[StepDistiller, Path]) -> None:
    trainer, bundle_dir = steps_run
    metadata = read_dit_metadata(bundle_dir / "dit")
    sigmas = json.loads(metadata[SCHEDULE_METADATA_KEY])
    expected = flow_schedule(2, trainer.flow_shift).tolist()
    assert sigmas == pytest.approx(expected) and len(sigmas) == 3
    bundle = load_bundle(bundle_dir)
    assert bundle.spec.limits.steps == 2
    assert torch.equal(
        load_dit(bundle_dir / "dit").state_dict()["img_in.proj.weight"],
        bundle.dit.state_dict()["img_in.proj.weight"],
    )


def test_teacher_grid_holds_the_student_boundaries(steps_run: tuple[StepDistiller, Path]) -> None:
    trainer = copy.copy(steps_run[0])
    grid = trainer.teacher_sigmas()  # teacher_steps=8, student_steps=2, student_shift = flow_shift
    assert torch.allclose(grid, flow_schedule(8, trainer.flow_shift))
    trainer.config = trainer.config.replace(student_shift=1.5)
    grid = trainer.teacher_sigmas()
    student = flow_schedule(2, 1.5)
    assert torch.equal(grid[::4], student) and len(grid) == 9
    assert torch.all(grid[1:] < grid[:-1])  # strictly decreasing: every teacher step moves


def test_pipeline_uses_student_schedule(steps_run: tuple[StepDistiller, Path]) -> None:
    _, bundle_dir = steps_run
    pipeline = VideoPipeline.from_dir(bundle_dir)
    assert pipeline.schedule is not None and len(pipeline.schedule) == 3
    request = GenerationRequest(prompt="a red circle moving left on a black background", seed=3)
    seen: list[Progress] = []
    result = pipeline.generate(request, on_progress=seen.append)
    assert result.plan.steps == 2
    assert max(p.total for p in seen if p.stage == "denoise") == 2
    assert result.mp4[4:8] == b"ftyp"
    with pytest.raises(ValueError, match="exactly 2 steps"):
        pipeline.plan(GenerationRequest(prompt="a red circle", steps=10))


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["cfg", "steps"])
def test_resume_continues_exactly(stage: str, teacher_dir: Path, tmp_path: Path) -> None:
    full = (CFGDistiller if stage == "cfg" else StepDistiller)(
        _config(stage, teacher_dir, tmp_path / "a", steps=6, checkpoint_every=3)
    )
    full.train()
    first = _config(stage, teacher_dir, tmp_path / "b", steps=3, checkpoint_every=3)
    (CFGDistiller if stage == "cfg" else StepDistiller)(first).train()
    assert [s for s, _ in list_checkpoints(first.out_dir)] == [3]
    resumed = (CFGDistiller if stage == "cfg" else StepDistiller)(first.replace(steps=6, resume=True))
    assert resumed.step == 3
    resumed.train()
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    for (name, a), (_, b) in zip(
        full.student.state_dict().items(), resumed.student.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed.metric_before == pytest.approx(full.metric_before)


def test_distill_command_runs_both_stages(teacher_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from hyv.training.distill.cli import distill_command

    app = typer.Typer()
    app.command("distill")(distill_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    args = ["distill", "--teacher", str(teacher_dir), "--out", str(tmp_path), "--stage", "both"]
    args += [
        "--steps",
        "2",
        "--teacher-samples",
        "8",
        "--student-steps",
        "2",
        "--size",
        "32",
        "--frames",
        "5",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cfg" / "bundle" / "bundle.json").is_file()
    assert (
        len(json.loads(read_dit_metadata(tmp_path / "steps" / "bundle" / "dit")[SCHEDULE_METADATA_KEY])) == 3
    )
    bad = CliRunner().invoke(app, [*args[:6], "--stage", "dmd"])
    assert bad.exit_code != 0 and "dmd" in bad.output


def test_a_student_of_a_served_teacher_samples_with_one_branch(teacher_dir: Path, tmp_path: Path) -> None:
    """A served teacher (hyv train export-teacher) says `guidance_mode: true_cfg` in its DiT header;
    its student learns the guidance in its embedding, so the header it exports must not say so,
    or the pipeline and the API would sample the student with true CFG (two branches, g fed 1.0)."""
    served = load_bundle(teacher_dir)
    served.spec = dataclasses.replace(served.spec, step_cache_coefficients=(1.0, -2.0, 3.0))
    teacher = save_bundle(served, tmp_path / "served", dit_metadata={GUIDANCE_MODE_METADATA_KEY: "true_cfg"})
    trainer = StepDistiller(_config("steps", teacher, tmp_path / "steps", steps=2, teacher_samples=8))
    assert trainer.teacher_metadata[GUIDANCE_MODE_METADATA_KEY] == "true_cfg"
    student = trainer.train()
    metadata = read_dit_metadata(student / "dit")
    assert GUIDANCE_MODE_METADATA_KEY not in metadata and metadata[CFG_DISTILLED_KEY] == "1"
    assert ServedModel.from_bundle("student", student).guidance_mode == "embedded"
    assert ServedModel.from_bundle("teacher", teacher).guidance_mode == "true_cfg"
    assert read_bundle_spec(student).step_cache_coefficients is None  # fitted on the teacher's DiT


def test_steps_trajectories_continue_continuation_clips(teacher_dir: Path, tmp_path: Path) -> None:
    """With `continuation_fraction` the teacher's video trajectories include continuations of the
    cache's continuation clips, image-conditioned on their first frames (never for images); a
    fraction of 0 draws nothing more, so the other trajectories stay as they were."""
    config = _config(
        "steps", teacher_dir, tmp_path / "run", steps=2, i2v_fraction=0.0, continuation_fraction=0.5,
        cache_continuations=4,
    )  # fmt: skip
    trainer = StepDistiller(config)
    clips = trainer.clips
    assert clips.continuation_count(VIDEO) == 4 and clips.continuation_count(IMAGE) == 0
    _, firsts, captions = clips.take(
        VIDEO, list(range(4)), torch.Generator().manual_seed(0), continuations=True
    )
    pool = trainer.pools[VIDEO]
    conditioned = pool["i2v"].bool()
    assert 0.2 < conditioned.float().mean() < 0.8  # i2v_fraction is 0: these are the continuations
    for row in conditioned.nonzero().flatten().tolist():
        match = [k for k in range(4) if torch.equal(pool["first"][row].float(), firsts[k].float())]
        assert match and pool["captions"][row] == captions[match[0]]
    assert not trainer.pools[IMAGE]["i2v"].bool().any()
    trainer.train()
    assert all(torch.isfinite(torch.tensor(trainer.losses)))

    rows = (firsts, list(captions), torch.zeros(4, dtype=torch.bool))
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    assert with_continuations(clips, VIDEO, 0.0, rows, generator) == rows
    assert torch.equal(generator.get_state(), state)  # nothing drawn
    with pytest.raises(ValueError, match="continuation_fraction"):
        _config("cfg", teacher_dir, tmp_path, continuation_fraction=0.5, cache_continuations=4)
