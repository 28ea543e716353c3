"""`hyv train eval` on tiny random bundles: eval.json, the contact sheet, the model card, the sampler
settings against the real pipeline, the judge on held-out ground truth and the errors; per bucket
(square, landscape and image buckets) with a section, thresholds and card rows per bucket."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

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
from hyv.training.data.buckets import Bucket
from hyv.training.eval import evaluate
from hyv.training.eval.card import CARD_FILE, RECIPE_FILE, THRESHOLDS, check_thresholds, render_model_card
from hyv.training.eval.cli import eval_command
from hyv.training.eval.reuse import load_teacher_results
from hyv.training.eval.runner import (
    EVAL_FILE,
    SHEET_FILE,
    EvalConfig,
    InvalidBundleError,
    eval_buckets,
    evaluate_bundle,
    heldout_items,
    sheet_file,
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


def _evaluate(bundles: dict[str, Path], out_dir: Path, **settings: Any) -> tuple[EvalConfig, dict]:
    """The student against the teacher at SIZE x FRAMES (teacher guidance 4, no progress bar), with
    `settings` for the rest: the config and evaluate_bundle's results."""
    config = EvalConfig(
        student=bundles["student"],
        teacher=bundles["teacher"],
        out_dir=out_dir,
        size=SIZE,
        num_frames=FRAMES,
        teacher_guidance=4.0,
        progress=False,
        **settings,
    )
    return config, evaluate_bundle(config)


@pytest.fixture(scope="module")
def run(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalConfig, dict]:
    return _evaluate(
        bundles,
        tmp_path_factory.mktemp("eval"),
        combinations=3,
        batch_size=2,  # several batches, one of them partial
        teacher_steps=3,
    )


def test_eval_json_has_every_number_with_sane_values(run: tuple[EvalConfig, dict]) -> None:
    config, results = run
    saved = json.loads((config.out_dir / EVAL_FILE).read_text())
    assert saved == results
    assert saved["settings"]["n_clips"] == 3 and len(saved["settings"]["combinations_evaluated"]) == 3
    assert saved["settings"]["size"] == SIZE and saved["settings"]["num_frames"] == FRAMES
    assert saved["settings"]["device"] == "cpu" and saved["settings"]["dtype"] == "float32"
    assert saved["settings"]["buckets"] == ["32x32x5"] and len(saved["buckets"]) == 1
    section = saved["buckets"][0]
    assert (section["bucket"], section["width"], section["height"], section["frames"]) == (
        "32x32x5",
        32,
        32,
        5,
    )
    for key in ("judge_ground_truth", "gap_points", "vae", "i2v"):  # a single bucket keeps the old keys
        assert saved[key] == section[key], key
    for role in ("teacher", "student"):
        assert {k: v for k, v in saved[role].items() if k != "model"} == section[role]
        acc = saved[role]["accuracy"]
        for key in ("color", "shape", "motion", "background", "all", "iou", "clean", "one_object"):
            assert 0.0 <= acc[key] <= 1.0, (role, key)
        record = saved[role]["clips"][0]
        assert 0.0 <= record["iou"] <= 1.0 and len(record["objects"]) == FRAMES
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
    truth = saved["judge_ground_truth"]
    assert truth["all"] == truth["clean"] == truth["one_object"] == 1.0 and truth["iou"] >= 0.99
    for part in ("untiled", "tiled"):
        assert 0.0 < saved["vae"][part]["psnr"] < 60.0 and -1.0 <= saved["vae"][part]["ssim"] <= 1.0
    assert saved["vae"]["tiling"]["sample_size"] == 16  # half the frame: the tiled pass really tiles
    assert 0.0 < saved["i2v"]["psnr"] < 60.0 and saved["i2v"]["psnr_min"] <= saved["i2v"]["psnr"]
    assert saved["i2v"]["n"] == 3 and 0.0 <= saved["i2v"]["accuracy"]["all"] <= 1.0
    assert saved["wall_s"] > 0 and saved["command"].startswith("hyv train eval --student")
    assert [row["key"] for row in saved["thresholds"]] == [t.key for t in THRESHOLDS]
    assert {row["bucket"] for row in saved["thresholds"]} == {"32x32x5"}
    assert saved["passed"] == all(row["passed"] is not False for row in saved["thresholds"])


def test_contact_sheet_and_model_card(run: tuple[EvalConfig, dict]) -> None:
    config, results = run
    with Image.open(config.out_dir / SHEET_FILE) as sheet:
        width, height = sheet.size
    # 3 clips x (teacher, student) rows, each 2 text lines + 64 px frames + padding.
    assert height == 6 * (4 + 2 * 13 + 2 * SIZE + 4) and width >= 5 * 2 * SIZE
    card = (config.student / CARD_FILE).read_text()
    _check_acceptance(card, results)
    assert "| color |" in card and "untrained (random) weights" in card
    assert "| 32x32x5 | 3 |" in card  # the per-bucket metrics table
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


@pytest.mark.parametrize(("width", "height"), [(48, 32), (32, 48)])
def test_non_square_generation_matches_the_served_pipeline(
    bundles: dict[str, Path], width: int, height: int
) -> None:
    """Landscape and portrait buckets: the batched generator gives the pipeline's frames, T2V and I2V."""
    items = heldout_items(combinations=2, seed=3, size=width, height=height)
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    image = render_clip(items[0].spec, 1, width, height)[0]
    pipeline = VideoPipeline.from_dir(bundles["student"], PipelineOptions())
    sampler = served_sampler(pipeline, width, FRAMES, height=height)
    t2v = generate_batch(pipeline, sampler, prompts, seeds, width, FRAMES, height=height)
    i2v = generate_batch(
        pipeline, sampler, prompts[:1], seeds[:1], width, FRAMES, images=[image], height=height
    )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    for clip, png in ((t2v[0], None), (i2v[0], buffer.getvalue())):
        request = GenerationRequest(
            prompt=prompts[0], image=png, width=width, height=height, num_frames=FRAMES, seed=seeds[0]
        )
        with torch.inference_mode():
            chunks = pipeline._frames(pipeline.plan(request), {}, None, None)
            served = np.concatenate([video_to_uint8(chunk[0]) for chunk in chunks])
        assert served.shape == clip.shape == (FRAMES, height, width, 3)
        assert np.abs(served.astype(int) - clip.astype(int)).max() <= 1


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
    with pytest.raises(
        ValueError, match=r"bucket 128x128x17: width must be a multiple of 16 in \[16, 64\], got 128"
    ):
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
    assert summary["student"]["n"] == 2 and summary["passed"] is False
    assert list(summary["buckets"]) == ["32x32x5"] and summary["buckets"]["32x32x5"]["vae_psnr"] is None
    assert not (out / SHEET_FILE).exists()
    bad = runner.invoke(app, ["--student", str(bundles["student"]), "--frames", "6"])
    assert bad.exit_code == 2 and "num_frames" in bad.output
    for buckets, why in (("32x32x5,40x32x5", "width must be a positive multiple of 16, got 40"),
                         ("32x32", "a bucket is WIDTHxHEIGHTxFRAMES")):  # fmt: skip
        bad = runner.invoke(app, ["--student", str(bundles["student"]), "--buckets", buckets])
        assert bad.exit_code == 2 and why in " ".join(bad.output.replace("│", " ").split()), bad.output


def _results(
    color: float, motion: float, shape: float, teacher: float | None, iou: float = 0.9, clean: float = 1.0
) -> dict:
    acc = {"color": color, "shape": shape, "motion": motion, "background": 1.0, "all": 0.5, "iou": iou,
           "clean": clean, "one_object": clean, "n": 4, "n_motion": 4}  # fmt: skip
    out: dict = {"student": {"accuracy": acc, "sampler": {"steps": 4, "mode": "embedded", "guidance": 6.0}}}
    if teacher is not None:
        out["gap_points"] = {k: 100.0 * (teacher - v) for k, v in acc.items()}
    out["vae"] = {"untiled": {"psnr": 32.0, "ssim": 0.95}, "tiled": {"psnr": 31.0, "ssim": 0.9}}
    out["i2v"] = {"psnr": 29.9}
    out["settings"] = {"size": 64, "num_frames": 17}
    return out


def _check_acceptance(card: str, results: dict) -> None:
    """Every threshold row is in the card's acceptance matrix, in its bucket's row, with its verdict."""
    lines = card.splitlines()
    start = lines.index("## Acceptance")
    header = lines[start + 2].split(" | ")
    for row in results["thresholds"]:
        assert row["label"] in card
        line = next(line for line in lines[start:] if line.startswith(f"| {row['bucket']} |"))
        cell = line.split(" | ")[header.index(next(h for h in header if h.startswith(row["key"] + " ")))]
        assert ("PASS" in cell) == (row["passed"] is True) and ("FAIL" in cell) == (row["passed"] is False), (
            cell
        )
    passed = all(row["passed"] is not False for row in results["thresholds"])
    assert ("**Overall: PASS**" in card) == passed and ("**Overall: FAIL**" in card) == (not passed)
    kinds = {
        kind: [r for r in results["thresholds"] if str(r.get("bucket")).endswith("x1") == (kind == "image")]
        for kind in ("video", "image")
    }
    for kind, rows in kinds.items():  # with both kinds, a verdict of each
        line = next((line for line in lines if line.startswith(f"- at the {kind} buckets (")), None)
        if not all(kinds.values()):
            assert line is None
            continue
        assert line is not None
        assert all(str(r["bucket"]) in line for r in rows)
        kind_passed = all(r["passed"] is not False for r in rows)
        assert ("**PASS**" in line) == kind_passed and ("**FAIL**" in line) == (not kind_passed), line
        assert f"of {len(rows)} checks failed" in line if not kind_passed else f"all {len(rows)}" in line


def test_thresholds_pass_fail_and_not_measured() -> None:
    """Issue 23's bars: color 95%, shape 90%, motion 90%, IoU 0.85, clean 95%, 3 points, 32 dB, 30 dB."""
    rows = {
        r["key"]: r for r in check_thresholds(_results(0.95, 0.90, 0.90, teacher=0.93, iou=0.85, clean=0.95))
    }
    assert [r["key"] for r in rows.values()] == [t.key for t in THRESHOLDS]
    for key in ("color", "motion", "shape", "iou", "clean", "vae_psnr"):  # on the line
        assert rows[key]["passed"], key
    assert rows["teacher_gap"]["value"] == pytest.approx(3.0) and rows["teacher_gap"]["passed"]
    assert rows["i2v_psnr"]["passed"] is False and rows["color"]["bucket"] == "64x64x17"
    rows = {
        r["key"]: r for r in check_thresholds(_results(0.94, 0.99, 0.5, teacher=0.99, iou=0.84, clean=0.9))
    }
    assert not rows["color"]["passed"] and rows["motion"]["passed"] and not rows["shape"]["passed"]
    assert not rows["iou"]["passed"] and not rows["clean"]["passed"]
    assert rows["teacher_gap"]["value"] == pytest.approx(49.0) and not rows["teacher_gap"]["passed"]
    rows = {r["key"]: r for r in check_thresholds(_results(1.0, 1.0, 1.0, teacher=None))}
    assert rows["teacher_gap"]["passed"] is None and math.isclose(rows["color"]["value"], 100.0)
    # Per bucket: an image bucket has no motion and no I2V criterion.
    video, image = _results(1.0, 1.0, 1.0, None), _results(0.5, math.nan, 1.0, None)
    video["i2v"] = {"psnr": 31.0}
    buckets = [{**video, "bucket": "96x64x17", "frames": 17}, {**image, "bucket": "96x64x1", "frames": 1}]
    rows_of = check_thresholds({"buckets": buckets})
    assert [r["key"] for r in rows_of if r["bucket"] == "96x64x1"] == [
        t.key for t in THRESHOLDS if not t.video_only
    ]
    failed = [(r["bucket"], r["key"]) for r in rows_of if r["passed"] is False]
    assert failed == [("96x64x1", "color")]


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
    results = _results(0.95, 0.9, 0.9, teacher=0.92)
    card = render_model_card(bundles["student"], results, recipe)
    assert "- Command: `make weights`" in card and "Seed: 7" in card and "70.0 min" in card
    assert "| vae | 3000 | 20.0 min | `hyv train vae` | lr=0.0003 |" in card and "extra_note: hello" in card
    assert "make weights    # train (resumable)" in card
    assert card.count("not measured") == 0 and card.count("**FAIL**") == 1  # I2V 29.9 dB < 30
    results["thresholds"] = check_thresholds(results)
    _check_acceptance(card, results)


# --- several buckets --------------------------------------------------------------------------

BUCKETS = ("32x32x5", "48x32x5", "32x32x1")  # square, landscape, an image bucket


@pytest.fixture(scope="module")
def bucket_run(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalConfig, dict]:
    return _evaluate(
        bundles,
        tmp_path_factory.mktemp("eval_buckets"),
        buckets=BUCKETS,
        combinations=2,
        batch_size=2,
        teacher_steps=2,
        vae_clips=1,
        sheet_clips=4,
        write_card=False,
    )


def test_every_bucket_gets_its_own_section(bucket_run: tuple[EvalConfig, dict]) -> None:
    config, results = bucket_run
    saved = json.loads((config.out_dir / EVAL_FILE).read_text())
    assert saved == results and saved["settings"]["buckets"] == list(BUCKETS)
    assert "--buckets 32x32x5,48x32x5,32x32x1" in saved["command"] and "--vae-clips 1" in saved["command"]
    assert [b["bucket"] for b in saved["buckets"]] == list(BUCKETS)
    for section in saved["buckets"]:
        width, height, frames = (int(v) for v in section["bucket"].split("x"))
        assert (section["width"], section["height"], section["frames"]) == (width, height, frames)
        assert section["n_clips"] == 2 and section["wall_s"] > 0
        truth = section["judge_ground_truth"]
        assert truth["all"] == truth["clean"] == 1.0 and truth["iou"] >= 0.99, section["bucket"]
        for role in ("teacher", "student"):
            acc = section[role]["accuracy"]
            assert acc["n"] == 2 and 0.0 <= acc["iou"] <= 1.0 and 0.0 <= acc["clean"] <= 1.0
            assert all(len(c["objects"]) == frames for c in section[role]["clips"])
            assert (acc["motion"] is None) == (frames == 1) and acc["n_motion"] == (0 if frames == 1 else 2)
        assert section["gap_points"]["iou"] == pytest.approx(
            100 * (section["teacher"]["accuracy"]["iou"] - section["student"]["accuracy"]["iou"])
        )
        assert 0.0 < section["vae"]["untiled"]["psnr"] < 60.0 and section["vae"]["n"] == 1  # vae_clips
        assert section["vae"]["tiling"]["sample_size"] == 16  # the short side split in two
        if frames == 1:
            assert "skipped" in section["i2v"] and section["student"]["sampler"]["steps"] == 2
        else:
            assert 0.0 < section["i2v"]["psnr"] < 60.0 and section["i2v"]["n"] == 2
    pooled = saved["student"]["accuracy"]  # every bucket's clips together
    assert saved["student"]["model"]["dit"]["parameters"] > 0 and saved["vae"] is None
    assert saved["judge_ground_truth"]["all"] == 1.0 and saved["judge_ground_truth"]["n"] == 6
    assert pooled["n"] == 6 and pooled["n_motion"] == 4
    assert pooled["color"] == pytest.approx(
        np.mean([b["student"]["accuracy"]["color"] for b in saved["buckets"]])
    )
    rows = saved["thresholds"]
    video_keys, image_keys = [t.key for t in THRESHOLDS], [t.key for t in THRESHOLDS if not t.video_only]
    assert [r["key"] for r in rows] == video_keys + video_keys + image_keys
    assert [r["bucket"] for r in rows] == ["32x32x5"] * 8 + ["48x32x5"] * 8 + ["32x32x1"] * 6
    section = saved["buckets"][1]
    color = next(r for r in rows if r["bucket"] == "48x32x5" and r["key"] == "color")
    assert color["value"] == pytest.approx(100 * section["student"]["accuracy"]["color"])


def test_buckets_generate_at_their_own_shape_and_aspect(bucket_run: tuple[EvalConfig, dict]) -> None:
    """The landscape bucket's clips really are 48 wide and 32 high, its ground truth is drawn at
    that aspect, and every bucket has its contact sheet (plus one overview)."""
    config, _ = bucket_run
    items = heldout_items(combinations=2, size=48, height=32)
    square = heldout_items(combinations=2)
    assert [it.caption for it in items] == [it.caption for it in square]
    assert [it.noise_seed for it in items] == [it.noise_seed for it in square]
    for bucket in BUCKETS:
        with Image.open(config.out_dir / sheet_file(bucket)) as sheet:
            width, height = sheet.size
        b = Bucket(*(int(v) for v in bucket.split("x")))
        # 2 clips x (teacher, student) rows: 2 text lines + the frames at 2x + padding.
        assert height == 4 * (4 + 2 * 13 + 2 * b.height + 4), bucket
        assert width >= min(5, b.frames) * 2 * b.width, bucket
    with Image.open(config.out_dir / SHEET_FILE) as sheet:  # one clip of each bucket, both roles
        assert sheet.size[1] == 6 * (4 + 2 * 13 + 2 * 32 + 4)


def test_card_has_a_row_per_bucket(bucket_run: tuple[EvalConfig, dict], bundles: dict[str, Path]) -> None:
    _, results = bucket_run
    recipe = {"command": "make bundle", "stages": [{"name": "dit", "steps": 10, "wall_time_s": 600.0}]}
    card = render_model_card(bundles["student"], results, recipe)
    table = [line for line in card.splitlines() if line.startswith("| 32x32x") or line.startswith("| 48x32x")]
    assert len(table) == 6  # the metrics table and the acceptance matrix: a row per bucket each
    metrics = next(line for line in table if line.startswith("| 48x32x5 | 2 |"))
    student = results["buckets"][1]["student"]["accuracy"]
    teacher = results["buckets"][1]["teacher"]["accuracy"]
    assert f"{100 * student['color']:.1f}% / {100 * teacher['color']:.1f}%" in metrics
    assert f"{student['iou']:.3f} / {teacher['iou']:.3f}" in metrics
    image = next(line for line in table if line.startswith("| 32x32x1 | 2 |"))
    assert image.split(" | ")[4] == "-"  # no motion for images
    _check_acceptance(card, results)
    assert "| dit | 10 | 10.0 min |" in card  # the recipe's wall time per stage
    for t in THRESHOLDS:
        assert f"- {t.key}: {t.label} {t.text}" in card


def test_buckets_default_to_the_bundles_then_to_size_and_frames(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    save_bundle(init_random_bundle("tiny"), bundle)
    config = EvalConfig(student=bundle, size=SIZE, num_frames=FRAMES)
    assert eval_buckets(config) == (Bucket(32, 32, 5),)  # the tiny bundle lists none
    spec = json.loads((bundle / "bundle.json").read_text())
    spec["limits"]["buckets"] = [[32, 32], [48, 32], [32, 48]]
    (bundle / "bundle.json").write_text(json.dumps(spec))
    assert eval_buckets(config) == (Bucket(32, 32, 5), Bucket(48, 32, 5), Bucket(32, 48, 5))  # num_frames
    spec["limits"]["frame_counts"] = [1, 9]
    (bundle / "bundle.json").write_text(json.dumps(spec))
    assert [str(b) for b in eval_buckets(config)] == [
        "32x32x1", "32x32x9", "48x32x1", "48x32x9", "32x48x1", "32x48x9",
    ]  # fmt: skip
    explicit = EvalConfig(student=bundle, buckets="48x32x5, 32x32x5")  # type: ignore[arg-type]  # as a CLI string
    assert explicit.buckets == ("48x32x5", "32x32x5") and eval_buckets(explicit)[0] == Bucket(48, 32, 5)
    spec["limits"]["buckets"] = [[40, 32]]
    (bundle / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"bundle.json: limits.buckets/frame_counts .*got 40"):
        eval_buckets(config)
    as_json = [{"width": 64, "height": 96, "frames": 33}]  # a recipe's config read back from JSON
    assert EvalConfig(student=bundle, buckets=as_json).buckets == ("64x96x33",)  # type: ignore[arg-type]
    assert (
        EvalConfig(student=bundle, size=64, num_frames=17, batch_size=8).batch_for(Bucket(128, 128, 33)) == 1
    )
    assert (
        EvalConfig(student=bundle, size=64, num_frames=17, batch_size=16).batch_for(Bucket(96, 64, 17)) == 10
    )
    assert EvalConfig(student=bundle, batch_size=16).batch_for(Bucket(64, 64, 1)) == 16  # never more


def test_a_teacher_is_sampled_at_buckets_its_limits_do_not_list(
    bundles: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The recipe's teacher is an intermediate bundle with its preset's limits (tiny: <= 9 frames);
    the exported student lists the buckets. The teacher is still evaluated there (a warning says so);
    a student that cannot serve a bucket is refused before any generation."""
    student = tmp_path / "student"
    save_bundle(_bundle(guidance_embed=True), student)
    spec = json.loads((student / "bundle.json").read_text())
    spec["limits"].update(max_frames=13, buckets=[[32, 32]])
    (student / "bundle.json").write_text(json.dumps(spec))
    config = EvalConfig(
        student=student, teacher=bundles["teacher"], out_dir=tmp_path / "out", size=SIZE, num_frames=FRAMES,
        buckets=("32x32x13",), combinations=1, teacher_steps=2, teacher_guidance=4.0, vae=False, i2v=False,
        sheet_clips=0, write_card=False, progress=False,
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        results = evaluate_bundle(config)
    assert "does not list bucket 32x32x13" in caplog.text
    assert results["teacher"]["sampler"]["steps"] == 2 and results["teacher"]["accuracy"]["n_motion"] == 1
    assert len(results["student"]["clips"][0]["objects"]) == 13
    with pytest.raises(ValueError, match=r"the student cannot generate bucket 48x32x13: size 48x32"):
        evaluate_bundle(dataclasses.replace(config, buckets=("48x32x13",)))


def test_teacher_results_are_reused_once_the_teacher_reproduces_them(
    bucket_run: tuple[EvalConfig, dict], bundles: dict[str, Path], tmp_path: Path
) -> None:
    """--teacher-results: the teacher is regenerated at the cheapest bucket only, checked clip by
    clip, and its other buckets are the earlier file's; the student's results do not change."""
    config, results = bucket_run
    earlier = config.out_dir / EVAL_FILE
    again = evaluate_bundle(dataclasses.replace(config, out_dir=tmp_path / "again", teacher_results=earlier))
    sections = {b["bucket"]: b for b in again["buckets"]}
    before = {b["bucket"]: b for b in results["buckets"]}
    check = sections["32x32x1"]["teacher"]  # the fewest DiT tokens
    assert check["reproduces"]["file"] == str(earlier)
    assert check["reproduces"]["largest_difference"]["iou"] <= 0.005
    assert "reused_from" not in check
    for name in ("32x32x5", "48x32x5"):
        assert sections[name]["teacher"]["reused_from"] == str(earlier)
        assert sections[name]["teacher"]["accuracy"] == before[name]["teacher"]["accuracy"]
        assert sections[name]["teacher"]["clips"] == before[name]["teacher"]["clips"]
        assert sections[name]["gap_points"] == pytest.approx(before[name]["gap_points"])
    assert again["teacher"]["accuracy"] == pytest.approx(results["teacher"]["accuracy"], nan_ok=True)
    assert "--teacher-results" in again["command"]
    card = render_model_card(bundles["student"], again)
    assert f"come from `{earlier}`" in card and "reproduced every clip's judgement" in card

    # An image bucket's motion is NaN, null in eval.json: reused, it is NaN again (the gaps subtract it).
    saved = json.loads(earlier.read_text())
    records = [
        {
            "bucket": b["bucket"],
            "batch_size": b["batch_size"],
            "items": [(c["caption"], c["seed"]) for c in b["teacher"]["clips"]],
        }
        for b in saved["buckets"]
    ]
    image = next(b for b in saved["buckets"] if b["bucket"] == "32x32x1")
    assert image["teacher"]["accuracy"]["motion"] is None
    assert math.isnan(
        load_teacher_results(earlier, saved["settings"], records)["32x32x1"]["accuracy"]["motion"]
    )


def test_teacher_results_that_do_not_match_are_refused(
    bucket_run: tuple[EvalConfig, dict], tmp_path: Path
) -> None:
    config, _ = bucket_run
    saved = json.loads((config.out_dir / EVAL_FILE).read_text())
    image = next(b for b in saved["buckets"] if b["bucket"] == "32x32x1")
    clip = image["teacher"]["clips"][0]
    clip["judged"]["shape"] = "triangle" if clip["judged"]["shape"] != "triangle" else "circle"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(saved))
    reuse = dataclasses.replace(config, out_dir=tmp_path / "out", teacher_results=tampered)
    with pytest.raises(ValueError, match=r"does not reproduce .*tampered.json at bucket 32x32x1: clip 0"):
        evaluate_bundle(reuse)
    with pytest.raises(ValueError, match=r"seed was 0 there, 1 here"):
        evaluate_bundle(dataclasses.replace(reuse, seed=1))
    with pytest.raises(ValueError, match=r"no such file"):
        evaluate_bundle(dataclasses.replace(reuse, teacher_results=tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"teacher_results needs the teacher bundle"):
        dataclasses.replace(reuse, teacher=None)
