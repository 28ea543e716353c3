"""load_vae / save_vae: diffusers directory, official .pt + config.json, own format, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hyv.models import CausalVAE3D, CheckpointError, load_vae, save_vae, vae_preset

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    cfg = vae_preset("tiny")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLHunyuanVideo(
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref


def official_config(ref: torch.nn.Module) -> dict[str, object]:
    """The official vae/config.json fields (AutoencoderKLCausal3D) for the reference's size."""
    return {
        "_class_name": "AutoencoderKLCausal3D",
        "_diffusers_version": "0.4.2",
        "act_fn": "silu",
        "block_out_channels": list(ref.config.block_out_channels),
        "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
        "in_channels": 3,
        "latent_channels": 16,
        "layers_per_block": ref.config.layers_per_block,
        "norm_num_groups": ref.config.norm_num_groups,
        "out_channels": 3,
        "sample_size": 256,
        "sample_tsize": 64,
        "up_block_types": ["UpDecoderBlockCausal3D"] * 4,
        "scaling_factor": 0.476986,
        "time_compression_ratio": 4,
        "mid_block_add_attention": True,
    }


def write_official(ref: torch.nn.Module, directory: Path, with_config: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wrapped = {"state_dict": {f"vae.{k}": v for k, v in ref.state_dict().items()}}
    torch.save(wrapped, directory / "pytorch_model.pt")
    if with_config:
        (directory / "config.json").write_text(json.dumps(official_config(ref)))
    return directory / "pytorch_model.pt"


def max_diffs(ref: torch.nn.Module, vae: CausalVAE3D) -> dict[str, float]:
    x = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (B, C, T, H, W)
    with torch.no_grad():
        ref_post = ref.encode(x).latent_dist
        post = vae.encode(x, tiled=False)
        dec_diff = (vae.decode(ref_post.mean, tiled=False) - ref.decode(ref_post.mean).sample).abs().max()
    return {
        "mean": (post.mean - ref_post.mean).abs().max().item(),
        "logvar": (post.logvar - ref_post.logvar).abs().max().item(),
        "decode": dec_diff.item(),
    }


def test_load_diffusers_directory(reference: torch.nn.Module, tmp_path: Path) -> None:
    reference.save_pretrained(tmp_path / "vae")
    for path in (tmp_path / "vae", tmp_path):  # the VAE dir, or a pipeline root holding vae/
        vae = load_vae(path)
        assert vae.config.block_out_channels == (8, 8, 16, 16) and vae.config.norm_num_groups == 4
        diffs = max_diffs(reference, vae)
        print(f"diffusers dir {path.name}: {diffs}")
        assert max(diffs.values()) <= 1e-5


def test_load_official_pt_with_config(reference: torch.nn.Module, tmp_path: Path) -> None:
    weights = write_official(reference, tmp_path / "vae")
    for path in (weights, weights.parent):
        vae = load_vae(path, dtype="fp32")
        assert vae.config.tile_sample_frames == 64 and vae.config.scaling_factor == pytest.approx(0.476986)
        diffs = max_diffs(reference, vae)
        print(f"official {path.name}: {diffs}")
        assert max(diffs.values()) <= 1e-5


def test_load_official_pt_without_config_infers_shapes(reference: torch.nn.Module, tmp_path: Path) -> None:
    weights = write_official(reference, tmp_path, with_config=False)
    inferred = load_vae(weights)
    assert inferred.config.block_out_channels == (8, 8, 16, 16)
    assert inferred.config.layers_per_block == 1 and inferred.config.latent_channels == 16
    # GroupNorm groups are invisible in shapes; a known config can be given explicitly.
    vae = load_vae(weights, config=vae_preset("tiny"))
    assert max(max_diffs(reference, vae).values()) <= 1e-5


def test_own_format_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = CausalVAE3D(vae_preset("tiny")).eval()
    save_vae(vae, tmp_path / "own")
    loaded = load_vae(tmp_path / "own")
    assert loaded.config == vae.config
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    half = load_vae(tmp_path / "own", dtype="bf16")
    assert half.dtype == torch.bfloat16


def test_other_architecture_is_rejected(tmp_path: Path) -> None:
    dit_like = {
        "img_in.proj.weight": torch.zeros(8, 16, 1, 2, 2),
        "double_blocks.0.img_attn_qkv.weight": torch.zeros(24, 8),
    }
    torch.save({"module": dit_like}, tmp_path / "dit.pt")
    with pytest.raises(CheckpointError, match="not a HunyuanVideo causal VAE"):
        load_vae(tmp_path / "dit.pt")
    (tmp_path / "sd_vae").mkdir()
    (tmp_path / "sd_vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="'AutoencoderKL'"):
        load_vae(tmp_path / "sd_vae")


def test_mismatched_size_is_rejected(reference: torch.nn.Module, tmp_path: Path) -> None:
    weights = write_official(reference, tmp_path, with_config=False)
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_vae(weights, config=vae_preset("small"))


def test_truncated_file_is_rejected(reference: torch.nn.Module, tmp_path: Path) -> None:
    weights = write_official(reference, tmp_path / "vae")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_vae(weights.parent)
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "missing.pt")
