"""LoRA key mapping: every format lands on the same per-weight deltas, checked against diffusers'
own HunyuanVideo LoRA conversion on the 13B key set (built on the meta device)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel
from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers
from safetensors.torch import save_file

from hyv.engine.lora_formats import (
    DIFFUSERS_METADATA_KEY,
    KOHYA_PREFIX,
    OFFICIAL_I2V_PREFIX,
    LoraError,
    LoraTargets,
    parse_lora,
    read_lora_file,
)
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DiTConfig, dit_preset
from hyv.models.dit_loading import diffusers_config

RANK = 3
Delta = tuple[torch.Tensor, torch.Tensor | None]
# Two places where diffusers' conversion of original-format LoRAs is not the weight's delta:
# it chunks the token refiner's qkv lora_A along the rank (so its parts no longer pair up with
# lora_B's), and it swaps the halves of the final modulation's lora_A rows as well as lora_B's.
DIFFUSERS_DIVERGES = ("self_attn_qkv", "final_layer.adaLN_modulation.1")


def meta_targets(config: DiTConfig) -> LoraTargets:
    with torch.device("meta"):
        return LoraTargets.of(HunyuanVideoDiT(config))


@pytest.fixture(scope="module")
def targets_13b() -> LoraTargets:
    return meta_targets(dit_preset("hunyuan-video-13b"))


def original_adapter(
    targets: LoraTargets, modules: list[str], seed: int = 0, rank: int = RANK
) -> dict[str, torch.Tensor]:
    """`diffusion_model.<Tencent module>.lora_A/B.weight`: the form diffusers converts from."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        rows, cols = targets.shapes[module]
        out[f"diffusion_model.{module}.lora_A.weight"] = (
            torch.randn(rank, cols, generator=generator) / cols**0.5
        )
        out[f"diffusion_model.{module}.lora_B.weight"] = torch.randn(rows, rank, generator=generator)
    return out


PROBE = torch.randn(16384, 4, generator=torch.Generator().manual_seed(99))  # (in, 4), sliced per layer
DENSE = (  # also compared whole: one of each fused layout
    "double_blocks.0.img_attn_qkv",
    "double_blocks.0.txt_attn_qkv",
    "single_blocks.0.linear1",
    "final_layer.adaLN_modulation.1",
    "txt_in.individual_token_refiner.blocks.0.self_attn_qkv",
)


def expected_deltas(original: dict[str, torch.Tensor]) -> dict[str, Delta]:
    """module -> (its delta on a random probe, the whole delta where it is one of DENSE)."""
    modules = {k.removeprefix("diffusion_model.").rsplit(".", 2)[0] for k in original}
    out: dict[str, Delta] = {}
    for m in modules:
        down, up = (
            original[f"diffusion_model.{m}.lora_A.weight"],
            original[f"diffusion_model.{m}.lora_B.weight"],
        )
        out[m] = (up @ (down @ PROBE[: down.shape[1]]), up @ down if m in DENSE else None)
    return out


def to_kohya(
    original: dict[str, torch.Tensor], alpha: float, prefix: str = KOHYA_PREFIX
) -> dict[str, torch.Tensor]:
    """kohya / musubi-tuner names; up scaled by rank / alpha so that up @ down * alpha / rank is
    the original delta."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        module, factor, _ = key.removeprefix("diffusion_model.").rsplit(".", 2)
        name = prefix + module.replace(".", "_")
        if factor == "lora_A":
            out[f"{name}.lora_down.weight"] = tensor
            out[f"{name}.alpha"] = torch.tensor(alpha)
        else:
            out[f"{name}.lora_up.weight"] = tensor * (tensor.shape[1] / alpha)
    return out


def deltas_of(state_dict: dict[str, torch.Tensor], targets: LoraTargets) -> dict[str, Delta]:
    adapter = parse_lora(state_dict, targets)
    out: dict[str, Delta] = {}
    for m in adapter.modules:
        rows, cols = targets.shapes[m]
        probed = torch.zeros(rows, PROBE.shape[1])
        for part in adapter.parts[m]:
            probed[part.start : part.stop] += part.up @ (part.down @ PROBE[:cols])
        out[m] = (probed, adapter.delta(m, (rows, cols)) if m in DENSE else None)
    return out


def assert_same_deltas(got: dict[str, Delta], want: dict[str, Delta]) -> None:
    assert sorted(got) == sorted(want)
    for module, (probed, dense) in want.items():
        torch.testing.assert_close(got[module][0], probed, rtol=1e-4, atol=1e-5, msg=module)
        if dense is not None:
            torch.testing.assert_close(got[module][1], dense, rtol=1e-5, atol=1e-6, msg=module)


def scaled(deltas: dict[str, Delta], factor: float) -> dict[str, Delta]:
    return {m: (p * factor, None if d is None else d * factor) for m, (p, d) in deltas.items()}


def test_13b_key_set_every_format_gives_the_same_deltas(targets_13b: LoraTargets) -> None:
    modules = list(targets_13b.shapes)
    assert len(modules) == 343  # every Linear of the 13B: refiner, embedders, 20 double, 40 single, final
    original = original_adapter(targets_13b, modules)
    want = expected_deltas(original)
    assert_same_deltas(deltas_of(original, targets_13b), want)  # native / ComfyUI names
    assert_same_deltas(deltas_of(to_kohya(original, alpha=1.5), targets_13b), want)
    # Tencent's I2V loader adds up @ down and skips .alpha: an alpha in the file changes nothing.
    official = to_kohya(original, alpha=RANK, prefix=OFFICIAL_I2V_PREFIX)
    official.update({k: torch.tensor(7.0) for k in official if k.endswith(".alpha")})
    assert_same_deltas(deltas_of(official, targets_13b), want)


def test_13b_matches_diffusers_conversion(targets_13b: LoraTargets) -> None:
    """Original-form and kohya-form adapters converted by diffusers' own function map to the
    same deltas of our (fused) weights as the raw files."""
    modules = [m for m in targets_13b.shapes if not m.endswith(DIFFUSERS_DIVERGES)]
    original = original_adapter(targets_13b, modules, seed=1)
    want = expected_deltas(original)
    converted = _convert_hunyuan_video_lora_to_diffusers(dict(original))
    assert all(k.startswith("transformer.") for k in converted)
    assert any(".attn.to_q.lora_B" in k for k in converted)  # really split: q/k/v, proj_mlp
    assert any(".proj_mlp.lora_B" in k for k in converted)
    assert_same_deltas(deltas_of(converted, targets_13b), want)
    no_prefix = {k.removeprefix("transformer."): v for k, v in converted.items()}
    assert_same_deltas(deltas_of(no_prefix, targets_13b), want)
    # Every converted key names a real module of diffusers' 13B transformer, with its shape.
    with torch.device("meta"):
        reference = HunyuanVideoTransformer3DModel(**diffusers_config(dit_preset("hunyuan-video-13b")))
    linears = {n: m for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear)}
    for key, tensor in converted.items():
        module, factor, _ = key.removeprefix("transformer.").rsplit(".", 2)
        layer = linears[module]
        expected_dim = layer.in_features if factor == "lora_A" else layer.out_features
        assert tensor.shape[1 if factor == "lora_A" else 0] == expected_dim, key


def test_diffusers_conversion_diverges_where_documented(targets_13b: LoraTargets) -> None:
    """The two excluded layers: diffusers' result is not the original delta (so it is not the
    reference there); our loader maps the raw file exactly and refuses the broken pairing."""
    original = original_adapter(targets_13b, ["txt_in.individual_token_refiner.blocks.0.self_attn_qkv"])
    converted = _convert_hunyuan_video_lora_to_diffusers(dict(original))
    with pytest.raises(LoraError, match="rank mismatch"):
        parse_lora(converted, targets_13b)
    original = original_adapter(targets_13b, ["final_layer.adaLN_modulation.1"], rank=4)
    converted = _convert_hunyuan_video_lora_to_diffusers(dict(original))
    ours = deltas_of(converted, targets_13b)["final_layer.adaLN_modulation.1"][1]
    want = expected_deltas(original)["final_layer.adaLN_modulation.1"][1]
    assert ours is not None and want is not None and not torch.allclose(ours, want)
    # A diffusers-form LoRA on norm_out.linear (scale, shift) lands on our (shift, scale) rows.
    down = torch.randn(4, 3072)
    up = torch.randn(6144, 4)
    diffusers_form = {
        "transformer.norm_out.linear.lora_A.weight": down,
        "transformer.norm_out.linear.lora_B.weight": up,
    }
    delta = deltas_of(diffusers_form, targets_13b)["final_layer.adaLN_modulation.1"][1]
    assert delta is not None
    torch.testing.assert_close(delta, torch.cat([up[3072:], up[:3072]]) @ down)


def test_split_parts_fill_their_rows_and_missing_parts_are_zero(targets_13b: LoraTargets) -> None:
    down_q, up_q = torch.randn(2, 3072), torch.randn(3072, 2)
    down_mlp, up_mlp = torch.randn(5, 3072), torch.randn(12288, 5)
    adapter = {
        "transformer.single_transformer_blocks.3.attn.to_q.lora_A.weight": down_q,
        "transformer.single_transformer_blocks.3.attn.to_q.lora_B.weight": up_q,
        "transformer.single_transformer_blocks.3.proj_mlp.lora_A.weight": down_mlp,
        "transformer.single_transformer_blocks.3.proj_mlp.lora_B.weight": up_mlp,
    }
    targets = targets_13b
    delta = parse_lora(adapter, targets).delta(
        "single_blocks.3.linear1", targets.shapes["single_blocks.3.linear1"]
    )
    assert delta.shape == (3 * 3072 + 12288, 3072)
    torch.testing.assert_close(delta[:3072], up_q @ down_q)
    assert not delta[3072 : 3 * 3072].any()  # k and v: no LoRA, zero delta
    torch.testing.assert_close(delta[3 * 3072 :], up_mlp @ down_mlp)


def test_small_dit_formats_and_alpha() -> None:
    config = dit_preset("small")
    targets = meta_targets(config)
    modules = list(targets.shapes)
    original = original_adapter(targets, modules, seed=2)
    want = expected_deltas(original)
    assert_same_deltas(deltas_of(to_kohya(original, alpha=0.5), targets), want)
    # native: <module>.lora_A/B.weight + alpha (scalar): delta = B @ A * alpha / rank
    native = {k.removeprefix("diffusion_model."): v for k, v in original.items()}
    native.update({f"{m}.alpha": torch.tensor(float(2 * RANK)) for m in modules})
    got = deltas_of(native, targets)
    assert_same_deltas(got, scaled(want, 2.0))
    # diffusers with PEFT's alpha in the header metadata (its conversion splits the single blocks'
    # linear1 at the 13B's width, so they stay out here)
    converted = _convert_hunyuan_video_lora_to_diffusers(
        {
            k: v
            for k, v in original.items()
            if "single" not in k and not any(d in k for d in DIFFUSERS_DIVERGES)
        }
    )
    adapter = parse_lora(converted, targets, metadata={DIFFUSERS_METADATA_KEY: '{"r": 3, "lora_alpha": 6}'})
    module = "double_blocks.0.img_attn_qkv"
    dense = want[module][1]
    assert dense is not None
    torch.testing.assert_close(adapter.delta(module, targets.shapes[module]), 2 * dense)


def test_refusals_name_the_problem(tmp_path) -> None:
    targets = meta_targets(dit_preset("small"))
    module = "double_blocks.0.img_attn_proj"
    rows, cols = targets.shapes[module]
    good = {f"{module}.lora_A.weight": torch.randn(4, cols), f"{module}.lora_B.weight": torch.randn(rows, 4)}
    with pytest.raises(
        LoraError, match=r"name no adaptable layer.*double_blocks\.0\.nonsense\.lora_A\.weight"
    ):
        parse_lora({**good, "double_blocks.0.nonsense.lora_A.weight": torch.randn(4, cols)}, targets)
    with pytest.raises(LoraError, match=rf"{module}.*wrong shapes.*down \(4, {cols + 1}\)"):
        parse_lora({**good, f"{module}.lora_A.weight": torch.randn(4, cols + 1)}, targets)
    with pytest.raises(LoraError, match=r"rank mismatch.*rank 4.*has 5"):
        parse_lora({**good, f"{module}.lora_B.weight": torch.randn(rows, 5)}, targets)
    bad = torch.randn(rows, 4)
    bad[0, 0] = math.nan
    with pytest.raises(LoraError, match=r"up holds NaN or inf"):
        parse_lora({**good, f"{module}.lora_B.weight": bad}, targets)
    with pytest.raises(LoraError, match=r"up \(lora_B\) is missing"):
        parse_lora({f"{module}.lora_A.weight": torch.randn(4, cols)}, targets)
    with pytest.raises(LoraError, match="holds no tensors"):
        parse_lora({}, targets)
    truncated = tmp_path / "broken.safetensors"
    save_file(good, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(LoraError, match="broken"):
        read_lora_file(truncated, targets)


def test_the_header_metadata_is_kept(tmp_path) -> None:
    targets = meta_targets(dit_preset("small"))
    module = "double_blocks.0.img_attn_proj"
    rows, cols = targets.shapes[module]
    tensors = {
        f"{module}.lora_A.weight": torch.randn(2, cols),
        f"{module}.lora_B.weight": torch.randn(rows, 2),
    }
    metadata = {"format": "hyv-lora", "trigger": "a {color} {shape} bouncing", "prior_fraction": "0.5"}
    save_file(tensors, str(tmp_path / "described.safetensors"), metadata=metadata)
    assert read_lora_file(tmp_path / "described.safetensors", targets).metadata == metadata
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    assert read_lora_file(tmp_path / "plain.safetensors", targets).metadata == {}
    assert parse_lora(tensors, targets).metadata == {}


def test_fp8_layers_are_refused_by_name() -> None:
    from hyv.models.fp8 import quantize_dit_

    model = HunyuanVideoDiT(dit_preset("tiny"))
    quantize_dit_(model)
    targets = LoraTargets.of(model)
    module = "double_blocks.0.img_attn_qkv"
    assert module in targets.not_adaptable and "final_layer.linear" in targets.shapes
    rows, cols = 3 * model.config.hidden_size, model.config.hidden_size
    adapter = {
        f"{module}.lora_A.weight": torch.randn(2, cols),
        f"{module}.lora_B.weight": torch.randn(rows, 2),
    }
    with pytest.raises(LoraError, match=rf"layers this worker holds in FP8.*{module}\.lora_A\.weight"):
        parse_lora(adapter, targets)
