"""FP8 DiT weights end to end: Tencent's FP8 release (its `_fp8.pt` + `_fp8_map.pt`) served as
downloaded and matching its bf16 twin, `hyv convert --dtype fp8`, `dit_dtype` on the pipeline,
and the video error against full precision (benchmarks/fp8_quality.py measures the same)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from benchmarks.fp8_quality import TINY_REQUEST, decoded_video, make_pipeline, tiny_bundle, video_error
from hyv.cli import app
from hyv.engine.bundle import load_bundle
from hyv.engine.limits import ModelLimits
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.release import find_release
from hyv.engine.request import GenerationRequest
from hyv.models import load_dit
from hyv.models.checkpoint_io import CheckpointError
from hyv.models.fp8 import FP8_DTYPE, FP8Linear, dequantize_weight
from hyv.service.model_loading import pipeline_options
from hyv.service.settings import Settings
from tests.fixtures.make_fp8_release_fixtures import FP8_DIT_FILE, FP8_MAP_FILE, write_official_fp8_releases
from tests.fixtures.make_release_fixtures import OFFICIAL_DIT_FILE, OFFICIAL_MODEL_DIR

runner = CliRunner()
FP8_LAYERS = 2 * 10 + 2 * 3  # the fixture DiT: 2 double blocks (10 linears), 2 single blocks (3)
# The tiny model's video with FP8 block linears vs the same pipeline without (fp32 compute).
# Measured on the 2-core CPU (torch 2.13.0+cpu): 47.8 dB (dequantized weights), 46.8 dB
# (torch._scaled_mm, fp8 activations); benchmarks/results/fp8_quality.json.
TINY_PSNR_DB = 45.0
TINY_SCALED_MM_PSNR_DB = 44.0
# The bf16 twin's video vs the FP8 release's (Tencent's per-tensor scales) and vs its own
# `hyv convert --dtype fp8` bundle (per-channel scales), decoded 64x64x5, fp32 compute: measured
# 60.0 dB and 61.7 dB (max abs 1 both).
RELEASE_PSNR_DB = 55.0
# The release's smallest bucket is 720x720: a smaller video keeps these tests to seconds.
SMALL_LIMITS = ModelLimits(width=64, height=64, num_frames=5, steps=2, flow_shift=7.0, guidance=6.0)


def release_video(weights: Path) -> np.ndarray:
    """The decoded frames of one request on a release folder or bundle, fp32 on the CPU."""
    bundle = load_bundle(weights)
    bundle = dataclasses.replace(bundle, spec=dataclasses.replace(bundle.spec, limits=SMALL_LIMITS))
    pipeline = VideoPipeline(bundle, PipelineOptions(dtype=torch.float32))
    return decoded_video(pipeline, GenerationRequest(prompt="a red circle moving left", seed=5))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the bf16 twin, Tencent's FP8 release) in Tencent's ckpts layout."""
    return write_official_fp8_releases(tmp_path_factory.mktemp("fp8-releases"))


def test_a_transformers_folder_with_only_the_fp8_file_is_a_release(releases: tuple[Path, Path]) -> None:
    twin, fp8 = releases
    model_dir = fp8 / OFFICIAL_MODEL_DIR
    assert not (model_dir / OFFICIAL_DIT_FILE).exists()
    layout = find_release(fp8)
    assert layout is not None and layout.kind == "official"
    assert layout.dit == model_dir / FP8_DIT_FILE
    twin_layout = find_release(twin)
    assert twin_layout is not None and twin_layout.dit == twin / OFFICIAL_MODEL_DIR / OFFICIAL_DIT_FILE


def test_an_fp8_release_without_its_map_names_the_missing_file(
    releases: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = shutil.copytree(releases[1], tmp_path / "ckpts")
    (broken / OFFICIAL_MODEL_DIR / FP8_MAP_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"mp_rank_00_model_states_fp8_map\.pt"):
        find_release(broken)
    with pytest.raises(CheckpointError, match=r"float8 weights \(26 layers\) without their scales"):
        load_dit(broken / OFFICIAL_MODEL_DIR / FP8_DIT_FILE)


def test_the_fp8_release_loads_and_matches_its_bf16_twin(releases: tuple[Path, Path]) -> None:
    twin, fp8 = releases
    reference = load_dit(twin / OFFICIAL_MODEL_DIR / OFFICIAL_DIT_FILE)
    model = load_dit(fp8 / OFFICIAL_MODEL_DIR / FP8_DIT_FILE)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert len(layers) == FP8_LAYERS
    expected = reference.state_dict()
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in layers and name.endswith(".weight"):
            assert tensor.dtype == FP8_DTYPE
            layer = layers[module]
            # Tencent's scale is per tensor: every channel has the same one, max |w| / 448
            w = expected[name].float()
            per_tensor = torch.full_like(layer.weight_scale, w.abs().max() / 448)
            torch.testing.assert_close(layer.weight_scale, per_tensor)
            back = dequantize_weight(layer.weight, layer.weight_scale)
            bound = 2.0**-4 * w.abs() + 2.0**-10 * layer.weight_scale[:, None]  # half an e4m3 step
            assert bool(((back - w).abs() <= bound * (1 + 1e-6)).all()), name
        elif not name.endswith(".weight_scale"):
            assert torch.equal(tensor, expected[name]), name  # everything else is the twin's bf16

    c = model.config
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, c.in_channels, 2, 4, 4, generator=g),
        torch.tensor([700.0]),
        torch.randn(1, 6, c.text_dim, generator=g),
        torch.ones(1, 6, dtype=torch.long),
        torch.randn(1, c.pooled_dim, generator=g),
        torch.tensor([6000.0]),
    )
    with torch.inference_mode():
        out, ref = model.float()(*inputs), reference.float()(*inputs)
    assert float((out - ref).norm() / ref.norm()) < 0.01  # measured 0.0024


@pytest.fixture(scope="module")
def twin_video(releases: tuple[Path, Path]) -> np.ndarray:
    return release_video(releases[0])


def test_the_fp8_release_generates_the_twins_video(
    releases: tuple[Path, Path], twin_video: np.ndarray
) -> None:
    error = video_error(twin_video, release_video(releases[1]))
    assert RELEASE_PSNR_DB < error["psnr_db"] < float("inf"), error


def test_convert_dtype_fp8_writes_fp8_block_linears_that_load_and_generate(
    releases: tuple[Path, Path], twin_video: np.ndarray, tmp_path: Path
) -> None:
    twin, fp8 = releases
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["convert", str(twin), str(out), "--dtype", "fp8"])
    assert result.exit_code == 0, result.output
    with safe_open(str(out / "dit" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.get_tensor("double_blocks.0.img_attn_qkv.weight").dtype == FP8_DTYPE
        assert handle.get_tensor("double_blocks.0.img_attn_qkv.weight_scale").shape == (3 * 64,)
        assert handle.get_tensor("final_layer.linear.weight").dtype == torch.bfloat16  # not quantized
    assert sum(k.endswith(".weight_scale") for k in keys) == FP8_LAYERS
    bundle = load_bundle(out)
    assert sum(isinstance(m, FP8Linear) for m in bundle.dit.modules()) == FP8_LAYERS
    error = video_error(twin_video, release_video(out))
    assert RELEASE_PSNR_DB < error["psnr_db"] < float("inf"), error

    # converting the FP8 release keeps it FP8 (its per-tensor scales become per-channel rows)
    kept = tmp_path / "kept"
    assert runner.invoke(app, ["convert", str(fp8), str(kept)]).exit_code == 0
    assert sum(isinstance(m, FP8Linear) for m in load_bundle(kept).dit.modules()) == FP8_LAYERS
    vae_dir = twin / OFFICIAL_MODEL_DIR / "vae"
    vae = runner.invoke(
        app, ["convert", str(vae_dir), str(tmp_path / "v"), "--kind", "vae", "--dtype", "fp8"]
    )
    assert vae.exit_code != 0 and "fp8 applies to the DiT only" in vae.output


def test_pipeline_dit_dtype_fp8_stays_within_the_psnr_bound() -> None:
    bundle = tiny_bundle()
    reference = decoded_video(make_pipeline(bundle, "fp32"), TINY_REQUEST)
    pipeline = make_pipeline(bundle, "fp8_dequant_fp32")
    assert sum(isinstance(m, FP8Linear) for m in pipeline.dit.modules()) == 13
    fp8 = decoded_video(pipeline, TINY_REQUEST)
    error = video_error(reference, fp8)
    assert TINY_PSNR_DB < error["psnr_db"] < float("inf"), error  # changed, but little
    assert error["max_abs"] <= 12, error  # measured 6
    scaled = video_error(reference, decoded_video(make_pipeline(bundle, "fp8_scaled_mm_fp32"), TINY_REQUEST))
    assert TINY_SCALED_MM_PSNR_DB < scaled["psnr_db"] < float("inf"), scaled

    # dit_dtype="fp32" on the FP8 DiT dequantizes it: plain linears, the same video
    options = PipelineOptions(dtype=torch.float32, dit_dtype="fp32")
    dequantized = VideoPipeline(dataclasses.replace(bundle, dit=pipeline.dit), options)
    assert not any(isinstance(m, FP8Linear) for m in dequantized.dit.modules())
    np.testing.assert_array_equal(decoded_video(dequantized, TINY_REQUEST), fp8)


def test_dit_dtype_is_checked_and_reaches_the_pipeline_from_the_settings() -> None:
    bundle = tiny_bundle()
    with pytest.raises(ValueError, match="unknown dit_dtype 'int4'"):
        VideoPipeline(bundle, PipelineOptions(dit_dtype="int4"))
    with pytest.raises(ValueError, match=r"dit_dtype='bf16' but dtype=torch\.float32"):
        VideoPipeline(bundle, PipelineOptions(dtype=torch.float32, dit_dtype="bf16"))
    assert pipeline_options(Settings(dit_dtype="fp8")).dit_dtype == "fp8"
    assert pipeline_options(Settings()).dit_dtype is None
    with pytest.raises(ValueError, match="dit_dtype must be one of"):
        Settings(dit_dtype="int4")


def test_generate_takes_dit_dtype(tmp_path: Path) -> None:
    from hyv.engine.bundle import save_bundle

    weights = save_bundle(tiny_bundle(), tmp_path / "tiny")
    args = ["generate", "a red circle", "--weights", str(weights), "--out", str(tmp_path / "v.mp4")]
    args += ["--device", "cpu", "--steps", "1", "--seed", "0", "--dit-dtype", "fp8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["path"] == str(tmp_path / "v.mp4")
    fp8 = (tmp_path / "v.mp4").read_bytes()
    assert runner.invoke(app, args[:-2]).exit_code == 0
    assert (tmp_path / "v.mp4").read_bytes() != fp8  # the option changed the weights the video came from
    bad = runner.invoke(app, [*args[:-1], "int4"])
    assert bad.exit_code == 2 and "unknown dit_dtype 'int4'" in bad.output
