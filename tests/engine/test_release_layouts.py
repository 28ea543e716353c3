"""HunyuanVideo release folders (Tencent's ckpts layout and the diffusers repository) served as
downloaded: the inferred spec, `hyv generate` on them, `hyv convert` to a bundle that generates the
same video, and clear errors for an incomplete folder. The folders are tiny models in the real
layouts (tests/fixtures/make_release_fixtures.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from hyv.cli import app
from hyv.engine.bundle_spec import read_bundle_spec
from hyv.engine.limits import BUCKETS_540P, BUCKETS_720P
from tests.fixtures.make_release_fixtures import OFFICIAL_MODEL_DIR
from tests.fixtures.releases import LAYOUTS, release_folder

runner = CliRunner()
SIZE = (720, 720)  # the smallest of the 13B's buckets


@pytest.fixture(scope="module", params=LAYOUTS)
def release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_folder(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_folder(tmp_path_factory, "official")


@pytest.fixture(scope="module")
def diffusers_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_folder(tmp_path_factory, "diffusers")


def decode_mp4(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an H.264 MP4, decoded with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def generate(weights: Path, out: Path, frames: int = 1) -> np.ndarray:
    width, height = SIZE
    args = ["generate", "a red circle moving left", "--weights", str(weights), "--out", str(out)]
    args += ["--width", str(width), "--height", str(height), "--frames", str(frames), "--steps", "2"]
    args += ["--seed", "5", "--device", "cpu", "--dtype", "fp32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "untrained" not in result.output  # a release holds trained weights
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["width"], summary["height"], summary["num_frames"]) == (width, height, frames)
    video = decode_mp4(out)
    assert video.shape == (frames, height, width, 3)
    return video


def copy_release(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_read_bundle_spec_infers_the_releases_defaults(release: Path) -> None:
    spec = read_bundle_spec(release)
    assert spec.name == "hunyuan-video-13b" and spec.trained and spec.text_encoder_preset is None
    limits = spec.limits
    assert limits.buckets == BUCKETS_540P + BUCKETS_720P
    assert (limits.width, limits.height, limits.num_frames, limits.max_frames) == (960, 544, 129, 129)
    assert (limits.steps, limits.flow_shift, limits.guidance) == (50, 7.0, 6.0)
    assert not limits.requires_image


def test_the_diffusers_flow_shift_comes_from_the_scheduler_config(
    diffusers_release: Path, tmp_path: Path
) -> None:
    copy = copy_release(diffusers_release, tmp_path / "release")
    config_path = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler" and config["shift"] == 7.0
    config_path.write_text(json.dumps({**config, "shift": 5.0}))
    assert read_bundle_spec(copy).limits.flow_shift == 5.0


def test_the_official_model_folder_takes_its_sibling_text_encoders(official: Path) -> None:
    from hyv.engine.bundle import load_bundle

    model_dir = official / OFFICIAL_MODEL_DIR
    assert read_bundle_spec(model_dir) == read_bundle_spec(official)
    bundle = load_bundle(model_dir)
    assert bundle.text_encoder is not None
    assert (bundle.text_encoder.text_dim, bundle.text_encoder.pooled_dim) == (32, 24)
    assert (bundle.dit.config.text_dim, bundle.dit.config.pooled_dim) == (32, 24)
    assert bundle.vae.config.spatial_compression_ratio == 8
    assert bundle.vae.config.temporal_compression_ratio == 4


def test_reading_a_release_spec_does_not_import_torch(release: Path) -> None:
    code = (
        "import sys; from hyv.engine.bundle_spec import read_bundle_spec; "
        f"read_bundle_spec({str(release)!r}); print(sorted(m for m in sys.modules if m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_generate_from_the_release_and_from_its_converted_bundle(release: Path, tmp_path: Path) -> None:
    direct = generate(release, tmp_path / "direct.mp4")
    assert direct.std() > 1.0  # not a blank frame: the weights reach the video

    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["convert", str(release), str(bundle)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in bundle.iterdir()} == {"bundle.json", "dit", "vae", "text_encoders"}
    assert {p.name for p in (bundle / "text_encoders").iterdir()} >= {"text_encoder", "text_encoder_2"}
    assert read_bundle_spec(bundle) == read_bundle_spec(release)

    # The same weights make the same video, decoded from the MP4s as a user gets them (the CPU
    # pipeline aligns memory-mapped weights, so the file's layout cannot change the rounding).
    converted = generate(bundle, tmp_path / "converted.mp4")
    diff = np.abs(converted.astype(int) - direct.astype(int))
    assert diff.max() <= 2, f"the converted bundle's video differs by up to {diff.max()}"


@pytest.mark.parametrize(
    ("layout", "remove", "named"),
    [
        ("official", f"{OFFICIAL_MODEL_DIR}/vae/config.json", "vae/config.json"),
        ("official", f"{OFFICIAL_MODEL_DIR}/transformers", "transformers/mp_rank_00_model_states.pt"),
        ("official", "text_encoder_2", "text_encoder_2/config.json"),
        ("diffusers", "scheduler", "scheduler/scheduler_config.json"),
        ("diffusers", "tokenizer_2", "tokenizer_2"),
        (
            "diffusers",
            "transformer/diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model*.safetensors",
        ),
    ],
)
def test_an_incomplete_release_names_what_is_missing(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, layout: str, remove: str, named: str
) -> None:
    copy = copy_release(release_folder(tmp_path_factory, layout), tmp_path / "release")
    victim = copy / remove
    shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    with pytest.raises(FileNotFoundError, match="incomplete") as error:
        read_bundle_spec(copy)
    assert named in str(error.value) and str(copy) in str(error.value)

    result = runner.invoke(app, ["generate", "x", "--weights", str(copy), "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2 and named in result.output.replace("\n", "")
    result = runner.invoke(app, ["convert", str(copy), str(tmp_path / "out")])
    assert result.exit_code == 2 and named in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_neither_a_bundle_nor_a_release_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        read_bundle_spec(tmp_path)
    message = str(error.value)
    for expected in ("bundle.json", "mp_rank_00_model_states.pt", "model_index.json", "hyv init-weights"):
        assert expected in message


def test_another_diffusers_pipeline_is_refused(diffusers_release: Path, tmp_path: Path) -> None:
    copy = copy_release(diffusers_release, tmp_path / "release")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "HunyuanVideoImageToVideoPipeline"})
    )
    with pytest.raises(ValueError, match="HunyuanVideoImageToVideoPipeline"):
        read_bundle_spec(copy)
