"""The teacher as a served model (hyv.training.teacher_export, `hyv train export-teacher`): the
student's limits with 50 steps, fp16 weights, true CFG (the idle guidance embedding dropped, a
trained one kept and marked), the VAE and text encoder linked to the student's, a model card, and
the pipeline and the API reading it as a 50-step true-CFG model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from hyv.cli import app
from hyv.engine.bundle import init_random_bundle, read_bundle_spec, save_bundle
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, GUIDANCE_MODE_METADATA_KEY
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.models import load_dit, read_dit_metadata
from hyv.service.api.validation import ServedModel
from hyv.training.teacher_export import export_teacher, teacher_of_run


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tiny_teacher(directory: Path, idle_guidance: bool) -> Path:
    """A tiny fp32 bundle; `idle_guidance`: its guidance embedding's output layer zeroed, as base
    training leaves it (hyv.training.dit.trainer)."""
    bundle = init_random_bundle("tiny", seed=3)
    if idle_guidance:
        assert bundle.dit.guidance_in is not None
        for parameter in bundle.dit.guidance_in.mlp[-1].parameters():
            torch.nn.init.zeros_(parameter)
    return save_bundle(bundle, directory)


def test_an_idle_guidance_embedding_is_dropped_and_the_velocity_is_unchanged(tmp_path: Path) -> None:
    teacher = _tiny_teacher(tmp_path / "teacher-run", idle_guidance=True)
    student = save_bundle(init_random_bundle("tiny", seed=4), tmp_path / "student")
    result = export_teacher(teacher, student, tmp_path / "out", steps=50)
    assert result.name == "hyv-tiny-teacher" and result.dropped_guidance_embed and result.shared == ()

    spec = read_bundle_spec(result.directory)
    student_limits = read_bundle_spec(student).limits
    assert spec.name == "hyv-tiny-teacher" and spec.trained
    assert spec.limits.steps == 50 and spec.limits.buckets == student_limits.buckets
    assert (spec.limits.max_width, spec.limits.max_frames) == (
        student_limits.max_width,
        student_limits.max_frames,
    )
    config = json.loads((result.directory / "dit" / "config.json").read_text())
    assert config["guidance_embed"] is False
    assert GUIDANCE_MODE_METADATA_KEY not in read_dit_metadata(result.directory / "dit")
    with safe_open(str(result.directory / "dit" / "model.safetensors"), "pt") as handle:
        names = handle.keys()
        assert not any(name.startswith("guidance_in.") for name in names)
        assert {handle.get_tensor(name).dtype for name in names} == {torch.float16}

    # The same velocity as the source DiT (cast to fp16 like the export) fed the base guidance 1.0.
    source = load_dit(teacher / "dit", dtype=torch.float16).float().eval()
    exported = load_dit(result.directory / "dit", dtype=torch.float32).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4)
    t = torch.tensor([500.0])
    text = torch.randn(1, 6, 32)
    mask = torch.ones(1, 6, dtype=torch.bool)
    pooled = torch.randn(1, 16)
    with torch.no_grad():
        expected = source(x, t, text, mask, pooled, torch.tensor([1000.0]))
        got = exported(x, t, text, mask, pooled, None)
    assert torch.equal(got, expected)

    card = (result.directory / "MODEL_CARD.md").read_text()
    assert "# hyv-tiny-teacher" in card and "`hyv-tiny`" in card and "50 steps" in card
    assert "left out" in card  # the dropped embedding


def test_export_teacher_command_on_the_bundled_model(tmp_path: Path) -> None:
    """weights/hyv-small's DiT stands in for a run's stage-4 DiT: its guidance embedding is trained
    (not zero), so it is kept and the DiT's header asks for true CFG; the VAE and text encoder are
    the student's, byte for byte, so they become links."""
    run = tmp_path / "run"
    (run / "dit_buckets").mkdir(parents=True)
    (run / "dit_buckets" / "bundle").symlink_to(DEFAULT_BUNDLE_DIR.resolve(), target_is_directory=True)
    state = {"stages": {"dit_buckets": {"finished": True, "output": str(run / "dit_buckets" / "bundle")}}}
    (run / "recipe_state.json").write_text(json.dumps(state))
    assert teacher_of_run(run) == run / "dit_buckets" / "bundle"
    # a finished continuation fine-tune is the teacher the student learned from
    later = tmp_path / "later"
    (later / "continuations").mkdir(parents=True)
    (later / "continuations" / "bundle").symlink_to(DEFAULT_BUNDLE_DIR.resolve(), target_is_directory=True)
    tuned = {"finished": True, "output": str(later / "continuations" / "bundle")}
    (later / "recipe_state.json").write_text(
        json.dumps({"stages": {**state["stages"], "continuations": tuned}})
    )
    assert teacher_of_run(later) == later / "continuations" / "bundle"
    # and a finished largest-bucket fine-tune of it is the teacher after that
    (later / "large").mkdir()
    (later / "large" / "bundle").symlink_to(DEFAULT_BUNDLE_DIR.resolve(), target_is_directory=True)
    large = {"finished": True, "output": str(later / "large" / "bundle")}
    (later / "recipe_state.json").write_text(
        json.dumps({"stages": {**state["stages"], "continuations": tuned, "large": large}})
    )
    assert teacher_of_run(later) == later / "large" / "bundle"

    out = tmp_path / "weights" / "hyv-small-teacher"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "export-teacher",
            "--run",
            str(run),
            "--out",
            str(out),
            "--student",
            str(DEFAULT_BUNDLE_DIR),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "hyv-small-teacher" in result.output
    for component in ("vae", "text_encoder"):
        assert (out / component).is_symlink()
        assert (out / component).resolve() == (DEFAULT_BUNDLE_DIR / component).resolve()
    assert not (out / "dit").is_symlink()
    assert read_dit_metadata(out / "dit")[GUIDANCE_MODE_METADATA_KEY] == "true_cfg"
    assert json.loads((out / "dit" / "config.json").read_text())["guidance_embed"] is True
    size = (out / "dit" / "model.safetensors").stat().st_size
    assert 5_000_000 < size < 6_000_000  # fp16: ~5.4 MB, the bundle's only new bytes

    # The API reads it as a 50-step true-CFG model with the student's sizes and no fixed schedule.
    served = ServedModel.from_bundle("hyv-small-teacher", out)
    student = ServedModel.from_bundle("hyv-small", DEFAULT_BUNDLE_DIR)
    assert served.fixed_steps is None and served.guidance_mode == "true_cfg"
    assert student.fixed_steps == 4 and student.guidance_mode == "embedded"
    public = served.public()
    assert public.defaults["steps"] == 50 and public.sizes == student.public().sizes
    assert "judged accuracy" in (out / "MODEL_CARD.md").read_text()  # from the student's eval.json

    # The pipeline samples it with true CFG (two branches) over its own flow schedule.
    pipeline = VideoPipeline.from_dir(out, PipelineOptions())
    assert pipeline.options.true_cfg is True and pipeline.schedule is None
    request = GenerationRequest(
        prompt="a red circle moving left on a black background", num_frames=1, steps=2
    )
    _, uncond = pipeline._encode_text(pipeline.plan(request))
    assert uncond is not None  # the negative branch: true CFG
    assert pipeline.generate(request).summary()["steps"] == 2


def test_export_teacher_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dit_buckets"):
        teacher_of_run(tmp_path)
    teacher = _tiny_teacher(tmp_path / "t", idle_guidance=False)
    with pytest.raises(ValueError, match="max_steps"):
        export_teacher(teacher, teacher, tmp_path / "out", steps=100000)
    with pytest.raises(ValueError, match="must differ"):
        export_teacher(teacher, teacher, teacher)
    result = CliRunner().invoke(app, ["train", "export-teacher", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--run" in result.output
