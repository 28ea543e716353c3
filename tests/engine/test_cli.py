"""End to end through the `hyv` command: an untrained tiny bundle, one generation, a real MP4."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hyv.cli import app
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, read_bundle_spec
from hyv.engine.video_io import read_mp4
from hyv.kernels.attention import set_attention_backend

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle")
    result = runner.invoke(app, ["init-weights", "--preset", "tiny", "--out", str(path), "--force"])
    assert result.exit_code == 0, result.output
    return path


def generate(bundle, out, *extra):
    args = ["generate", "a red circle moving left on a black background", "--weights", str(bundle)]
    args += ["--out", str(out), "--width", "32", "--height", "48", "--frames", "9", "--steps", "2", *extra]
    return runner.invoke(app, args)


def test_init_weights_writes_a_bundle(bundle):
    assert (bundle / "bundle.json").is_file()
    assert {p.name for p in bundle.iterdir()} >= {"dit", "vae", "text_encoder"}
    result = runner.invoke(app, ["init-weights", "--preset", "tiny", "--out", str(bundle)])
    assert result.exit_code == 0 and "already holds a bundle" in result.output


def test_generate_writes_mp4_and_prints_one_json_line(bundle, tmp_path):
    video = tmp_path / "out.mp4"
    result = generate(bundle, video, "--seed", "3", "--fps", "12")
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(video)
    assert summary["seed"] == 3 and summary["num_frames"] == 9 and summary["fps"] == 12
    assert set(summary["seconds"]) == {"text_encode", "denoise", "decode", "encode"}
    assert summary["peak_memory_mb"] > 0
    frames = read_mp4(video)
    assert frames.shape == (9, 48, 32, 3)

    again = tmp_path / "again.mp4"  # same seed, same settings -> the same video
    assert generate(bundle, again, "--seed", "3", "--fps", "12").exit_code == 0
    # Loaded twice, the weights sit at other addresses, where MKL's GEMM may round differently
    # (seen once across separately built pipelines); the exact byte-for-byte check of a warm
    # pipeline is in test_pipeline.py.
    diff = np.abs(read_mp4(again).astype(int) - frames.astype(int))
    assert diff.mean() < 0.25 and diff.max() <= 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--frames", "8"], "num_frames must be 4n+1"),
        (["--width", "40"], "width must be a multiple of 16"),
        (["--frames", "13"], "num_frames must be 4n+1 in [1, 9]"),
        (["--image", "missing.png"], "No such file"),
    ],
)
def test_generate_rejects_bad_requests_with_a_clear_message(bundle, tmp_path, extra, message):
    result = generate(bundle, tmp_path / "x.mp4", *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.mp4").exists()


GRAMMAR_HINT = (
    "; this model follows 'a {color} {shape} {motion} on a {background} background' with color: red, "
)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--negative-prompt", "blurry"],
            "invalid request: negative_prompt: words outside this model's vocabulary: 'blurry'",
        ),
        (["--negative-prompt", "a white square"], None),  # in the vocabulary: generates
    ],
)
def test_generate_checks_the_negative_prompt_too(bundle, tmp_path, extra, message):
    result = generate(bundle, tmp_path / "x.mp4", "--steps", "1", *extra)
    if message is None:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and result.output.startswith(message + GRAMMAR_HINT)
        assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    ("prompt", "named"),
    [
        ("a cat playing piano", "'cat', 'playing', 'piano'"),
        ("an orange circle moving left on a black background", "'orange'"),
        ("一只猫在弹钢琴", "'一只猫在弹钢琴'"),
        ("a red circle, moving left; on a black café!", "'café'"),
    ],
)
def test_generate_refuses_prompts_outside_the_vocabulary(bundle, tmp_path, prompt, named):
    args = ["generate", prompt, "--weights", str(bundle), "--out", str(tmp_path / "x.mp4")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output  # one line, not wrapped, no traceback
    assert lines[0].startswith(f"invalid request: prompt: words outside this model's vocabulary: {named}")
    assert GRAMMAR_HINT in lines[0] and lines[0].endswith("background: black, gray")
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["a cat playing piano"],
            "prompt: words outside this model's vocabulary: 'cat', 'playing', 'piano'; ",
        ),
        (
            ["a red circle moving left on a black background", "--frames", "65"],
            "is not one of this model's lengths",
        ),
        (
            ["a red circle moving left on a black background", "--width", "256", "--height", "256"],
            "this model's sizes: ",
        ),
    ],
)
def test_generate_with_the_bundled_model_refuses_cleanly(tmp_path, args, message):
    """The real command on the shipped bundle, as a user runs it: exit code 2, one line on stderr
    naming what the model serves, no traceback, no file."""
    out = tmp_path / "x.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "hyv", "generate", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},  # a narrow terminal: still one line
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    spec = read_bundle_spec(DEFAULT_BUNDLE_DIR)
    if "sizes" in message:
        assert lines[0].endswith(f"(this model's sizes: {spec.limits.sizes_text()})")
    if "lengths" in message:
        assert lines[0].endswith(f"lengths: {spec.limits.lengths_text()}")
    assert not out.exists()


def test_generate_takes_the_memory_options(bundle, tmp_path):
    assert generate(bundle, tmp_path / "default.mp4", "--seed", "1").exit_code == 0
    options = ["--offload", "--text-encoder-placement", "cpu", "--attention-backend", "sdpa"]
    try:
        result = generate(bundle, tmp_path / "offloaded.mp4", "--seed", "1", *options)
    finally:
        set_attention_backend(None)  # process-wide: back to automatic for the other tests
    assert result.exit_code == 0, result.output
    diff = np.abs(
        read_mp4(tmp_path / "offloaded.mp4").astype(int) - read_mp4(tmp_path / "default.mp4").astype(int)
    )
    assert diff.mean() < 0.25 and diff.max() <= 8
    tiled = generate(
        bundle, tmp_path / "tiled.mp4", "--seed", "1", "--vae-tile-frames", "4", "--vae-tile-overlap", "0"
    )
    assert tiled.exit_code == 0, tiled.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--text-encoder-placement", "gpu"], "text encoder placement must be one of device, offload, cpu"),
        (["--attention-backend", "cudnn"], "unknown attention backend 'cudnn'"),
        (["--vae-tile-overlap", "1.5"], "VAE tile overlap must be in [0, 1)"),
    ],
)
def test_generate_rejects_bad_memory_options(bundle, tmp_path, extra, message):
    result = generate(bundle, tmp_path / "x.mp4", *extra)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())  # rich wraps the message in a box
    assert not (tmp_path / "x.mp4").exists()


def test_generate_without_a_bundle_says_how_to_make_one(tmp_path):
    result = runner.invoke(app, ["generate", "x", "--weights", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "hyv init-weights" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "hyv", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "init-weights", "convert"):
        assert command in out.stdout


def test_train_dit_writes_a_bundle_that_generates_and_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", "dit", "--bundle", "tiny", "--size", "32", "--frames", "5", "--batch-size", "1"]
    args += ["--checkpoint-every", "2", "--out", str(run), "--lr-schedule", "cosine"]
    args += ["--cache-videos", "2", "--cache-images", "1"]
    result = runner.invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--steps", "4", "--resume"])
    assert result.exit_code == 0, result.output
    losses = (run / "losses.csv").read_text().strip().splitlines()
    assert len(losses) == 1 + 4  # header + one row per step, the resumed run continued at step 3
    assert (run / "loss.png").stat().st_size > 0 and (run / "latent_cache.pt").is_file()
    video = tmp_path / "trained.mp4"
    result = generate(run / "bundle", video)
    assert result.exit_code == 0, result.output
    assert "untrained" not in result.output
    assert read_mp4(video).shape == (9, 48, 32, 3)


def test_train_dit_rejects_bad_options(tmp_path):
    result = runner.invoke(app, ["train", "dit", "--frames", "8", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "num_frames" in result.output
    result = runner.invoke(app, ["train", "dit", "--lr-schedule", "linear", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "lr_schedule" in result.output


def test_generate_applies_loras_by_name_and_path(bundle, tmp_path):
    from safetensors.torch import save_file

    from hyv.engine.lora_formats import LoraTargets
    from hyv.models.dit_loading import load_dit

    targets = LoraTargets.of(load_dit(bundle / "dit"))
    rows, cols = targets.shapes["final_layer.linear"]
    generator = torch.Generator().manual_seed(0)
    adapter = {
        "final_layer.linear.lora_A.weight": torch.randn(2, cols, generator=generator),
        "final_layer.linear.lora_B.weight": torch.randn(rows, 2, generator=generator),
    }
    (bundle / "loras").mkdir(exist_ok=True)
    save_file(adapter, str(bundle / "loras" / "shade.safetensors"))
    elsewhere = tmp_path / "mine.safetensors"
    save_file(adapter, str(elsewhere))

    base = tmp_path / "base.mp4"
    assert generate(bundle, base, "--seed", "4").exit_code == 0
    with_loras = tmp_path / "loras.mp4"
    result = generate(bundle, with_loras, "--seed", "4", "--lora", "shade", "--lora", f"{elsewhere}:0.5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["loras"] == [{"name": "shade", "scale": 1.0}, {"name": "mine", "scale": 0.5}]
    assert np.abs(read_mp4(with_loras).astype(int) - read_mp4(base).astype(int)).mean() > 2

    result = generate(bundle, tmp_path / "x.mp4", "--lora", "nope")
    assert result.exit_code == 2 and "no LoRA named 'nope'; available: ['shade']" in result.output
    result = generate(bundle, tmp_path / "x.mp4", "--lora", str(tmp_path / "absent.safetensors"))
    assert result.exit_code == 2 and "no such file" in result.output
    result = generate(bundle, tmp_path / "x.mp4", "--lora", "shade:inf")
    assert result.exit_code == 2 and "--lora shade:inf:" in result.output and "finite" in result.output
