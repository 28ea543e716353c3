"""HunyuanVideo DiT weight formats: official (.pt / .safetensors), diffusers, our own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from hyv.models.checkpoint_io import CheckpointError
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import dit_preset
from hyv.models.dit_loading import (
    config_from_diffusers,
    diffusers_to_official_state_dict,
    infer_dit_config,
    load_dit,
    official_to_diffusers_state_dict,
    read_dit_metadata,
    save_dit,
)
from tests.models.test_dit import TINY, TOL, make_inputs, make_reference, max_diff_vs_reference, randomize_


@pytest.fixture(scope="module")
def reference() -> Any:
    return make_reference(seed=3)


@pytest.fixture(scope="module")
def official_sd(reference: Any) -> dict[str, torch.Tensor]:
    return diffusers_to_official_state_dict(reference.state_dict(), TINY)


def test_conversion_round_trip(reference: Any, official_sd: dict[str, torch.Tensor]) -> None:
    back = official_to_diffusers_state_dict(official_sd, TINY)
    ref_sd = reference.state_dict()
    assert set(back) == set(ref_sd)
    for key, tensor in ref_sd.items():
        assert torch.equal(back[key], tensor), key


@pytest.mark.parametrize("fmt", ["pt_module", "pt_ema", "pt_bare", "safetensors"])
def test_official_file_inferred_config(
    fmt: str, reference: Any, official_sd: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in official_sd.items()}, str(path))
    else:
        path = tmp_path / "mp_rank_00_model_states.pt"
        wrapper = {"pt_module": "module", "pt_ema": "ema"}.get(fmt)
        torch.save({wrapper: official_sd} if wrapper else official_sd, path)
    assert infer_dit_config(official_sd) == TINY
    model = load_dit(path)  # no config: inferred from tensor shapes, strict key match
    assert model.config == TINY
    diff = max_diff_vs_reference(reference, model, make_inputs(valid=(4, 7)))
    print(f"[dit parity] official {fmt}: max abs diff {diff:.3e}")
    assert diff <= TOL


def test_sibling_config_sets_rope_axes(official_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    torch.save({"module": official_sd}, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"rope_axes_dim": [4, 10, 10]}))
    assert load_dit(tmp_path / "model.pt").config.rope_axes_dim == (4, 10, 10)


def test_sharded_diffusers_directory(reference: Any, tmp_path: Path) -> None:
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    diff = max_diff_vs_reference(reference, load_dit(tmp_path / "sharded"), make_inputs())
    print(f"[dit parity] diffusers sharded: max abs diff {diff:.3e}")
    assert diff <= TOL


@pytest.mark.parametrize("preset", ["hunyuan-video-13b", "hunyuan-video-i2v-13b", "small", "medium", "base"])
def test_infer_config_of_presets(preset: str) -> None:
    config = dit_preset(preset)
    with torch.device("meta"):
        sd = HunyuanVideoDiT(config).state_dict()
    assert infer_dit_config(sd) == config


def test_own_format_round_trip(tmp_path: Path) -> None:
    model = HunyuanVideoDiT(TINY.replace(image_condition="latent_concat"))
    randomize_(model, seed=5)
    metadata = {"schedule": json.dumps({"steps": 8, "shift": 7.0}), "distilled": "step"}
    save_dit(model, tmp_path / "own", metadata=metadata)
    loaded = load_dit(tmp_path / "own")
    assert loaded.config == model.config
    assert read_dit_metadata(tmp_path / "own") == metadata
    inputs = make_inputs(in_channels=33, valid=(2, 6))
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs), loaded(**inputs))
    half = load_dit(tmp_path / "own", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    with pytest.raises(ValueError, match="metadata must map str to str"):
        save_dit(model, tmp_path / "bad", metadata={"steps": 8})  # type: ignore[dict-item]


def test_vae_checkpoint_rejected(tmp_path: Path) -> None:
    path = tmp_path / "vae.pt"
    torch.save({"state_dict": {"encoder.conv_in.conv.weight": torch.zeros(128, 3, 3, 3, 3)}}, path)
    with pytest.raises(
        CheckpointError, match=r"not an official HunyuanVideo DiT checkpoint: missing 'img_in"
    ):
        load_dit(path)


def test_flux_checkpoint_rejected(tmp_path: Path) -> None:
    flux = {
        "img_in.weight": torch.zeros(48, 64),
        "txt_in.weight": torch.zeros(48, 32),
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(144, 48),
        "final_layer.linear.weight": torch.zeros(64, 48),
    }
    path = tmp_path / "flux.safetensors"
    save_file(flux, str(path))
    with pytest.raises(CheckpointError, match=r"missing 'img_in.proj.weight'"):
        load_dit(path)


def test_wrong_config_rejected(official_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    torch.save(official_sd, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_dit(tmp_path / "m.pt", config=TINY.replace(depth_single=2))
    with pytest.raises(CheckpointError, match=r"has shape .* the config expects"):
        load_dit(tmp_path / "m.pt", config=TINY.replace(text_dim=16))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(suffix: str, official_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.save({"module": official_sd}, path)
    else:
        save_file({k: v.contiguous() for k, v in official_sd.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_dit(path)


def test_not_a_dit_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanVideo"}))
    with pytest.raises(CheckpointError, match="neither a 'hyv-dit' directory nor a diffusers"):
        load_dit(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "missing.pt")


def test_token_replace_diffusers_config_rejected() -> None:
    with pytest.raises(CheckpointError, match="image_condition_type='token_replace' is not supported"):
        config_from_diffusers({"image_condition_type": "token_replace"})
