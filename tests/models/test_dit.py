"""HunyuanVideo DiT: parity with diffusers, presets, config validation and input checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed
from torch import nn

from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DIT_PRESETS, DiTConfig, dit_preset
from hyv.models.dit_loading import diffusers_to_official_state_dict, load_dit
from hyv.models.ops import rope_tables

TOL = 1e-5
TINY = dit_preset("tiny")
TINY_DIFFUSERS_KWARGS: dict[str, Any] = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=TINY.num_heads,
    attention_head_dim=TINY.head_dim,
    num_layers=TINY.depth_double,
    num_single_layers=TINY.depth_single,
    num_refiner_layers=TINY.refiner_depth,
    text_embed_dim=TINY.text_dim,
    pooled_projection_dim=TINY.pooled_dim,
    rope_axes_dim=TINY.rope_axes_dim,
    guidance_embeds=True,
)


def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Random values for every parameter, including the ones diffusers initialises to zero/one,
    so that a wrong mapping or a swapped half cannot hide behind a zero tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__ == "RMSNorm"
            for name, p in module.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                if p.ndim >= 2:
                    p.copy_(noise / p[0].numel() ** 0.5)
                elif is_norm and name == "weight":
                    p.copy_(1.0 + 0.1 * noise)
                else:
                    p.copy_(0.1 * noise)


def make_reference(seed: int = 0, **overrides: Any) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    ref = HunyuanVideoTransformer3DModel(**{**TINY_DIFFUSERS_KWARGS, **overrides})
    randomize_(ref, seed)
    return ref.eval()


def make_inputs(
    in_channels: int = 16,
    batch: int = 2,
    thw: tuple[int, int, int] = (3, 6, 10),
    text_len: int = 7,
    valid: tuple[int, ...] | None = None,
    seed: int = 1,
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    for i, n in enumerate(valid or ()):
        mask[i, n:] = 0  # right padding, as the text encoder produces
    return dict(
        hidden_states=torch.randn(batch, in_channels, *thw, generator=gen),
        timestep=torch.linspace(50.0, 950.0, batch),
        encoder_hidden_states=torch.randn(batch, text_len, TINY.text_dim, generator=gen),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, TINY.pooled_dim, generator=gen),
        guidance=torch.linspace(1000.0, 6000.0, batch),
    )


def max_diff_vs_reference(
    ref: HunyuanVideoTransformer3DModel, ours: HunyuanVideoDiT, inputs: dict[str, torch.Tensor]
) -> float:
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        got = ours(**inputs)
    assert got.shape == expected.shape
    return float((got - expected).abs().max())


PARITY_CASES = {
    "t2v_guidance": ({}, {}),
    "t2v_no_guidance": ({"guidance_embeds": False}, {}),
    "padded_text": ({}, {"valid": (3, 6), "text_len": 8}),
    "odd_latent_batch1": ({}, {"batch": 1, "thw": (5, 2, 14)}),
    "i2v_latent_concat": (
        {"in_channels": 33, "image_condition_type": "latent_concat"},
        {"in_channels": 33, "valid": (5, 2)},
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_diffusers(case: str, tmp_path: Path, record_property: Any) -> None:
    ref_kwargs, input_kwargs = PARITY_CASES[case]
    ref = make_reference(**ref_kwargs)
    ref.save_pretrained(tmp_path / "ref")
    ours = load_dit(tmp_path / "ref")
    diff = max_diff_vs_reference(ref, ours, make_inputs(**input_kwargs))
    print(f"[dit parity] {case}: max abs diff {diff:.3e}")
    record_property("max_abs_diff", diff)
    assert diff <= TOL


def test_padded_text_tokens_have_no_influence() -> None:
    torch.manual_seed(0)
    model = HunyuanVideoDiT(TINY).eval()
    randomize_(model)
    inputs = make_inputs(valid=(3, 5))
    changed = dict(inputs)
    noise = torch.randn_like(inputs["encoder_hidden_states"]) * 10
    changed["encoder_hidden_states"] = torch.where(
        inputs["encoder_attention_mask"][..., None].bool(), inputs["encoder_hidden_states"], noise
    )
    with torch.no_grad():
        diff = (model(**inputs) - model(**changed)).abs().max()
    assert diff <= 1e-6


def test_rope_tables_match_diffusers() -> None:
    t, h, w = 3, 3, 5
    cos_ref, sin_ref = HunyuanVideoRotaryPosEmbed(2, 1, [16, 56, 56], 256.0)(
        torch.zeros(1, 16, t, 2 * h, 2 * w)
    )
    cos, sin = rope_tables(t, h, w, (16, 56, 56), 256.0)
    assert cos.shape == (t * h * w, 128)
    torch.testing.assert_close(cos, cos_ref, rtol=0, atol=0)
    torch.testing.assert_close(sin, sin_ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("preset", "diffusers_kwargs"),
    [
        ("hunyuan-video-13b", {}),
        (
            "hunyuan-video-i2v-13b",
            {"in_channels": 33, "image_condition_type": "latent_concat", "guidance_embeds": False},
        ),
    ],
)
def test_13b_preset_matches_official_keys(preset: str, diffusers_kwargs: dict[str, Any]) -> None:
    config = dit_preset(preset)
    with torch.device("meta"):
        ref = HunyuanVideoTransformer3DModel(**diffusers_kwargs)
        ours = HunyuanVideoDiT(config)
    official = diffusers_to_official_state_dict(ref.state_dict(), config)
    ours_sd = ours.state_dict()
    assert set(official) == set(ours_sd)
    assert all(official[k].shape == v.shape for k, v in ours_sd.items())
    count = ours.num_parameters()
    print(f"[dit params] {preset}: {count:,}")
    assert count == sum(p.numel() for p in ref.parameters())
    assert 12.5e9 <= count <= 13.1e9


def test_presets_build_and_sizes() -> None:
    sizes = {}
    for name, config in DIT_PRESETS.items():
        with torch.device("meta"):
            sizes[name] = HunyuanVideoDiT(config).num_parameters()
    print(f"[dit params] {sizes}")
    assert 2e6 <= sizes["small"] <= 4e6  # the bundled model (hidden 128): fp16 within the 40 MB budget
    assert 30e6 <= sizes["medium"] <= 50e6
    assert 300e6 <= sizes["base"] <= 400e6
    assert dit_preset("small").in_channels == 33 and dit_preset("small").out_channels == 16


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match=r"unknown DiT preset 'huge'.*tiny"):
        dit_preset("huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rope_axes_dim": (8, 8, 10)}, r"rope_axes_dim=\(8, 8, 10\) sums to 26.*head_dim.*24"),
        ({"rope_axes_dim": (7, 9, 8)}, r"rope_axes_dim entries must be positive and even"),
        ({"num_heads": 5}, r"hidden_size=48 is not divisible by num_heads=5"),
        ({"image_condition": "token_replace"}, r"image_condition='token_replace' is unknown"),
        ({"depth_double": -1}, r"depth_double must be a non-negative int, got -1"),
        ({"patch_size": (1, 2)}, r"patch_size must be 3 positive ints"),
    ],
)
def test_impossible_config(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TINY.replace(**changes)


def test_config_dict_round_trip() -> None:
    for config in DIT_PRESETS.values():
        assert DiTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown DiTConfig fields.*'bogus'"):
        DiTConfig.from_dict({**TINY.to_dict(), "bogus": 1})


@pytest.fixture(scope="module")
def tiny_model() -> HunyuanVideoDiT:
    torch.manual_seed(0)
    return HunyuanVideoDiT(TINY).eval()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.update(hidden_states=d["hidden_states"][:, :15]),
            r"has 15 channels, expected in_channels=16",
        ),
        (
            lambda d: d.update(encoder_attention_mask=d["encoder_attention_mask"][:, :5]),
            r"encoder_attention_mask shape \(2, 5\) does not match the text \(B, L\) = \(2, 7\)",
        ),
        (lambda d: d.update(hidden_states=d["hidden_states"][:, :, :, :5]), r"latent H=5 is not divisible"),
        (lambda d: d.update(guidance=None), r"guidance is required"),
        (
            lambda d: d.update(hidden_states=d["hidden_states"][:, :, 0]),
            r"must be 5-D.*got shape \(2, 16, 6, 10\)",
        ),
        (
            lambda d: d.update(pooled_projections=d["pooled_projections"][:, :8]),
            r"pooled_projections must be \(B, pooled_dim\) = \(2, 16\), got \(2, 8\)",
        ),
        (
            lambda d: d.update(encoder_hidden_states=d["encoder_hidden_states"][..., :30]),
            r"encoder_hidden_states must be \(B=2, L, text_dim=32\)",
        ),
    ],
)
def test_bad_inputs(tiny_model: HunyuanVideoDiT, mutate: Any, message: str) -> None:
    inputs: dict[str, Any] = make_inputs()
    mutate(inputs)
    with pytest.raises(ValueError, match=message):
        tiny_model(**inputs)


def test_temporal_patch_not_divisible() -> None:
    model = HunyuanVideoDiT(TINY.replace(patch_size=(2, 2, 2)))
    with pytest.raises(ValueError, match=r"latent T=3 is not divisible by patch size 2"):
        model(**make_inputs())


def test_training_init_and_checkpointing() -> None:
    model = HunyuanVideoDiT(TINY)
    model.init_weights()
    model.gradient_checkpointing = True
    model.train()
    out = model(**make_inputs())
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: the untrained model predicts zero
    out.square().add(out).sum().backward()
    assert model.final_layer.linear.weight.grad is not None


def test_extra_text_padding_is_trimmed_exactly() -> None:
    from hyv.models.dit import trim_text_padding

    torch.manual_seed(0)
    model = HunyuanVideoDiT(dit_preset("tiny")).eval()
    for param in model.parameters():
        param.data.normal_(0.0, 0.2)
    x = torch.randn(2, 16, 3, 4, 6)
    text = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    padded_text = torch.cat([text, torch.randn(2, 20, 32)], dim=1)  # 20 more padded columns
    padded_mask = torch.cat([mask, torch.zeros(2, 20, dtype=mask.dtype)], dim=1)
    args = (torch.tensor([300.0, 700.0]),)
    tail = (torch.randn(2, 16), torch.tensor([5000.0, 5000.0]))
    with torch.no_grad():
        short = model(x, *args, text, mask, *tail)
        long = model(x, *args, padded_text, padded_mask, *tail)
    assert (short - long).abs().max().item() <= 1e-6
    trimmed, trimmed_mask = trim_text_padding(padded_text, padded_mask)
    assert trimmed.shape[1] == 3 and trimmed_mask.shape == (2, 3)
    assert trim_text_padding(text, torch.zeros_like(mask))[0].shape[1] == 1
