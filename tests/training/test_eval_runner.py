"""`hyv train eval` on tiny random bundles: eval.json, the contact sheet, the model card, the sampler
settings against the real pipeline, the judge on held-out ground truth and the errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from hyv.engine.bundle import ModelBundle, init_random_bundle, save_bundle
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import video_to_uint8
from hyv.models import HunyuanVideoDiT, dit_preset
from hyv.training.data import heldout_combinations, is_heldout, render_clip
from hyv.training.eval import evaluate
from hyv.training.eval.card import CARD_FILE, RECIPE_FILE, THRESHOLDS, check_thresholds, render_model_card
from hyv.training.eval.cli import eval_command
from hyv.training.eval.runner import (
    EVAL_FILE,
    SHEET_FILE,
    EvalConfig,
    InvalidBundleError,
    evaluate_bundle,
    heldout_items,
)
from hyv.training.eval.sampling import generate_batch, served_sampler, teacher_sampler

SIZE, FRAMES = 32, 5


def _bundle(guidance_embed: bool = True) -> ModelBundle:
    """Tiny bundle with the 33-channel (T2V + I2V) DiT; weights random, not zero-gated."""
    bundle = init_random_bundle("tiny", seed=0)
    torch.manual_seed(1)
    config = dit_preset("tiny").replace(image_condition="latent_concat", guidance_embed=guidance_embed)
    bundle.dit = HunyuanVideoDiT(config)
    for param in bundle.dit.parameters():
        param.data.normal_(0.0, 0.1)
    return bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "student": save_bundle(_bundle(guidance_embed=True), root / "student"),
        "teacher": save_bundle(_bundle(guidance_embed=False), root / "teacher"),
    }


@pytest.fixture(scope="module")
def run(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalConfig, dict]:
    config = EvalConfig(
        student=bundles["student"],
        teacher=bundles["teacher"],
        out_dir=tmp_path_factory.mktemp("eval"),
        size=SIZE,
        num_frames=FRAMES,
        combinations=3,
        batch_size=2,  # several batches, one of them partial
        teacher_steps=3,
        teacher_guidance=4.0,
        progress=False,
    )
    return config, evaluate_bundle(config)


def test_eval_json_has_every_number_with_sane_values(run: tuple[EvalConfig, dict]) -> None:
    config, results = run
    saved = json.loads((config.out_dir / EVAL_FILE).read_text())
    assert saved == results
    assert saved["settings"]["n_clips"] == 3 and len(saved["settings"]["combinations_evaluated"]) == 3
    assert saved["settings"]["size"] == SIZE and saved["settings"]["num_frames"] == FRAMES
    assert saved["settings"]["device"] == "cpu" and saved["settings"]["dtype"] == "float32"
    for role in ("teacher", "student"):
        acc = saved[role]["accuracy"]
        for key in ("color", "shape", "motion", "background", "all"):
            assert 0.0 <= acc[key] <= 1.0, (role, key)
        assert acc["n"] == 3 and acc["n_motion"] == 3
        assert len(saved[role]["clips"]) == 3 and saved[role]["wall_s"]["generate"] > 0
        dit = _bundle(guidance_embed=role == "student").dit
        assert saved[role]["model"]["dit"]["parameters"] == sum(p.numel() for p in dit.parameters())
    for key, gap in saved["gap_points"].items():
        want = 100.0 * (saved["teacher"]["accuracy"][key] - saved["student"]["accuracy"][key])
        assert gap == pytest.approx(want)
    # The exact settings: the teacher's 3 steps of true CFG at 4.0, the student's served 2 steps.
    teacher, student = saved["teacher"]["sampler"], saved["student"]["sampler"]
    assert (teacher["mode"], teacher["steps"], teacher["guidance"], len(teacher["sigmas"])) == (
        "true_cfg",
        3,
        4.0,
        4,
    )
    assert (student["mode"], student["steps"], student["guidance"]) == ("embedded", 2, 6.0)
    assert student["sigmas"][0] == 1.0 and student["sigmas"][-1] == 0.0
    assert saved["judge_ground_truth"]["all"] == 1.0
    for part in ("untiled", "tiled"):
        assert 0.0 < saved["vae"][part]["psnr"] < 60.0 and -1.0 <= saved["vae"][part]["ssim"] <= 1.0
    assert saved["vae"]["tiling"]["sample_size"] == 16  # half the frame: the tiled pass really tiles
    assert 0.0 < saved["i2v"]["psnr"] < 60.0 and saved["i2v"]["psnr_min"] <= saved["i2v"]["psnr"]
    assert saved["i2v"]["n"] == 3 and 0.0 <= saved["i2v"]["accuracy"]["all"] <= 1.0
    assert saved["wall_s"] > 0 and saved["command"].startswith("hyv train eval --student")
    assert [row["key"] for row in saved["thresholds"]] == [t.key for t in THRESHOLDS]


def test_contact_sheet_and_model_card(run: tuple[EvalConfig, dict]) -> None:
    config, results = run
    with Image.open(config.out_dir / SHEET_FILE) as sheet:
        width, height = sheet.size
    # 3 clips x (teacher, student) rows, each 2 text lines + 64 px frames + padding.
    assert height == 6 * (4 + 2 * 13 + 2 * SIZE + 4) and width >= 5 * 2 * SIZE
    card = (config.student / CARD_FILE).read_text()
    for row in results["thresholds"]:
        assert row["label"] in card
        line = next(line for line in card.splitlines() if line.startswith(f"| {row['label']} |"))
        assert ("PASS" in line) == (row["passed"] is True) and ("FAIL" in line) == (row["passed"] is False)
    assert "| color |" in card and "untrained (random) weights" in card
    assert "0.25 M" in card  # the tiny DiT's parameter count, read from the safetensors header
    assert f"No `{RECIPE_FILE}`" in card and results["command"] in card


def test_generation_matches_the_served_pipeline(bundles: dict[str, Path]) -> None:
    """The batched generator gives the pipeline's frames (before H.264) for the same prompt and seed,
    with the student's served settings, with true CFG, and for I2V."""
    items = heldout_items(combinations=2, seed=3)
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    images = [render_clip(it.spec, FRAMES, SIZE)[0] for it in items]
    for role in ("student", "teacher"):  # the teacher has no guidance embedding: the pipeline does true CFG
        pipeline = VideoPipeline.from_dir(bundles[role], PipelineOptions())
        if role == "student":
            sampler, steps, guidance = served_sampler(pipeline, SIZE, FRAMES), None, None
        else:
            sampler, steps, guidance = teacher_sampler(pipeline, SIZE, FRAMES, 3, 4.0, ""), 3, 4.0
        t2v = generate_batch(pipeline, sampler, prompts, seeds, SIZE, FRAMES)
        i2v = generate_batch(pipeline, sampler, prompts, seeds, SIZE, FRAMES, images=images)
        buffer = io.BytesIO()
        Image.fromarray(images[1]).save(buffer, format="PNG")
        for clip, image in ((t2v[1], None), (i2v[1], buffer.getvalue())):
            request = GenerationRequest(
                prompt=prompts[1], image=image, width=SIZE, height=SIZE, num_frames=FRAMES,
                steps=steps, guidance=guidance, seed=seeds[1],
            )  # fmt: skip
            with torch.inference_mode():
                chunks = pipeline._frames(pipeline.plan(request), {}, None, None)
                served = np.concatenate([video_to_uint8(chunk[0]) for chunk in chunks])
            assert served.shape == clip.shape == (FRAMES, SIZE, SIZE, 3)
            assert np.abs(served.astype(int) - clip.astype(int)).max() <= 1, role
        assert np.abs(t2v[1].astype(int) - i2v[1].astype(int)).mean() > 0.5  # the image matters
        assert np.abs(t2v[0].astype(int) - t2v[1].astype(int)).mean() > 0.5  # so do prompt and seed
    with pytest.raises(ValueError, match="one seed"):
        generate_batch(pipeline, sampler, prompts, seeds[:1], SIZE, FRAMES)


def test_judge_scores_rendered_heldout_ground_truth_perfectly() -> None:
    items = heldout_items(samples_per_combination=2, seed=11)
    assert len(items) == 88 and {it.spec.attributes for it in items} == set(heldout_combinations())
    for size, frames in ((64, 17), (SIZE, FRAMES)):
        clips = [(render_clip(it.spec, frames, size), it.caption) for it in items]
        acc = evaluate(clips)
        for key in ("color", "shape", "motion", "background", "all"):
            assert acc[key] == 1.0, (size, frames, key)


def test_heldout_items_are_deterministic_and_spread() -> None:
    items = heldout_items(combinations=4, samples_per_combination=2, seed=5)
    assert items == heldout_items(combinations=4, samples_per_combination=2, seed=5)
    assert len(items) == 8 and all(is_heldout(it.spec) for it in items)
    held = heldout_combinations()
    assert [it.spec.attributes for it in items[:4]] == [held[0], held[11], held[22], held[33]]
    assert [it.spec.attributes for it in items[4:]] == [it.spec.attributes for it in items[:4]]
    assert items[0].spec != items[4].spec  # a second sample: same caption, other geometry
    assert len({it.noise_seed for it in items}) == 8
    assert heldout_items(combinations=4, seed=6)[0].noise_seed != items[0].noise_seed
    with pytest.raises(ValueError, match="combinations must be in"):
        heldout_items(combinations=45)


def test_bad_bundle_paths_and_settings_give_clear_errors(bundles: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidBundleError, match=r"student bundle directory .*nope does not exist"):
        evaluate_bundle(EvalConfig(student=tmp_path / "nope", out_dir=tmp_path / "out", progress=False))
    with pytest.raises(InvalidBundleError, match=r"teacher bundle directory .* is not a model bundle"):
        evaluate_bundle(
            EvalConfig(student=bundles["student"], teacher=tmp_path, out_dir=tmp_path / "out", progress=False)
        )
    broken = tmp_path / "broken"
    save_bundle(init_random_bundle("tiny"), broken)
    (broken / "dit" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidBundleError, match=r"student bundle .*broken could not be loaded"):
        evaluate_bundle(EvalConfig(student=broken, out_dir=tmp_path / "out", size=SIZE, num_frames=FRAMES,
                                   combinations=1, progress=False))  # fmt: skip
    assert not (tmp_path / "out").exists()  # nothing written before the failure
    with pytest.raises(ValueError, match=r"size must be a multiple of 16.*got 40"):
        EvalConfig(student=broken, size=40)
    with pytest.raises(ValueError, match=r"num_frames must be 4n\+1.*got 6"):
        EvalConfig(student=broken, num_frames=6)
    with pytest.raises(ValueError, match=r"width must be a multiple of 16 in \[16, 64\], got 128"):
        evaluate_bundle(EvalConfig(student=bundles["student"], out_dir=tmp_path / "o", size=128,
                                   combinations=1, progress=False))  # fmt: skip


def test_cli_prints_a_summary_and_exits_2_on_a_bad_bundle(bundles: dict[str, Path], tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(eval_command)
    runner = CliRunner()
    missing = runner.invoke(app, ["--student", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    out = tmp_path / "cli"
    args = ["--student", str(bundles["student"]), "--out", str(out), "--size", "32", "--frames", "5",
            "--combinations", "2", "--no-vae", "--no-i2v", "--sheet-clips", "0", "--no-card"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["eval"] == str(out / EVAL_FILE) and summary["teacher"] is None
    assert summary["student"]["n"] == 2 and summary["vae_psnr"] is None and summary["passed"] is False
    assert not (out / SHEET_FILE).exists()
    bad = runner.invoke(app, ["--student", str(bundles["student"]), "--frames", "6"])
    assert bad.exit_code == 2 and "num_frames" in bad.output


def _results(color: float, motion: float, shape: float, teacher: float | None) -> dict:
    acc = {"color": color, "shape": shape, "motion": motion, "background": 1.0, "all": 0.5}
    out: dict = {"student": {"accuracy": acc, "sampler": {"steps": 4, "mode": "embedded", "guidance": 6.0}}}
    if teacher is not None:
        out["gap_points"] = {k: 100.0 * (teacher - v) for k, v in acc.items()}
    out["vae"] = {"untiled": {"psnr": 32.0, "ssim": 0.95}, "tiled": {"psnr": 31.0, "ssim": 0.9}}
    out["i2v"] = {"psnr": 24.9}
    return out


def test_thresholds_pass_fail_and_not_measured() -> None:
    rows = {r["key"]: r for r in check_thresholds(_results(0.90, 0.85, 0.80, teacher=0.83))}
    assert rows["color"]["passed"] and rows["motion"]["passed"] and rows["shape"]["passed"]  # on the line
    assert rows["teacher_gap"]["value"] == pytest.approx(3.0) and rows["teacher_gap"]["passed"]
    assert rows["vae_psnr"]["passed"] and rows["i2v_psnr"]["passed"] is False
    rows = {r["key"]: r for r in check_thresholds(_results(0.89, 0.99, 0.5, teacher=0.99))}
    assert not rows["color"]["passed"] and rows["motion"]["passed"] and not rows["shape"]["passed"]
    assert rows["teacher_gap"]["value"] == pytest.approx(49.0) and not rows["teacher_gap"]["passed"]
    rows = {r["key"]: r for r in check_thresholds(_results(1.0, 1.0, 1.0, teacher=None))}
    assert rows["teacher_gap"]["passed"] is None and math.isclose(rows["color"]["value"], 100.0)


def test_card_renders_the_recipe(bundles: dict[str, Path]) -> None:
    recipe = {
        "command": "make weights",
        "seed": 7,
        "hardware": "2-core CPU",
        "stages": [
            {"name": "vae", "steps": 3000, "wall_time_s": 1200.0, "command": "hyv train vae", "lr": 3e-4},
            {"name": "dit", "steps": 9000, "wall_time_s": 3000.0, "command": "hyv train dit"},
        ],
        "extra_note": "hello",
    }
    card = render_model_card(bundles["student"], _results(0.95, 0.9, 0.85, teacher=0.87), recipe)
    assert "- Command: `make weights`" in card and "Seed: 7" in card and "70.0 min" in card
    assert "| vae | 3000 | 20.0 min | `hyv train vae` | lr=0.0003 |" in card and "extra_note: hello" in card
    assert "make weights    # train (resumable)" in card
    assert card.count("not measured") == 0 and card.count("**FAIL**") == 1  # I2V 24.9 dB < 25
