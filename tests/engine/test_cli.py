"""End to end through the `hyv` command: an untrained tiny bundle, one generation, a real MP4."""

import subprocess
import sys

from typer.testing import CliRunner

from engine.cli import app
from engine.video_io import read_mp4

runner = CliRunner()


def test_init_weights_then_generate_writes_a_playable_mp4(tmp_path):
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["init-weights", "--preset", "tiny", "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    assert (bundle / "bundle.json").is_file()
    assert {p.name for p in bundle.iterdir()} >= {"dit", "vae", "text_encoder"}

    def generate(output):
        args = ["generate", "a red circle moving left on a black background", "--weights", str(bundle)]
        args += ["--out", str(output), "--width", "32", "--height", "48", "--frames", "9", "--steps", "2"]
        return runner.invoke(app, args)

    video = tmp_path / "out.mp4"
    result = generate(video)
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output
    frames = read_mp4(video)
    assert frames.shape == (9, 48, 32, 3)

    # Same seed, same settings -> the same video.
    again = tmp_path / "again.mp4"
    result = generate(again)
    assert result.exit_code == 0, result.output
    assert (read_mp4(again) == frames).all()


def test_generate_rejects_bad_sizes_with_a_clear_message(tmp_path):
    bundle = tmp_path / "bundle"
    assert runner.invoke(app, ["init-weights", "--preset", "tiny", "--out", str(bundle)]).exit_code == 0
    result = runner.invoke(app, ["generate", "x", "--weights", str(bundle), "--frames", "8"])
    assert result.exit_code == 2
    assert "num_frames must be 4n+1" in result.output
    result = runner.invoke(app, ["generate", "x", "--weights", str(bundle), "--width", "40"])
    assert result.exit_code == 2
    assert "width must be a multiple of 16" in result.output


def test_generate_without_a_bundle_says_how_to_make_one(tmp_path):
    result = runner.invoke(app, ["generate", "x", "--weights", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "hyv init-weights" in result.output


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("generate", "init-weights", "convert"):
        assert command in out.stdout
