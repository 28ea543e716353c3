"""FP8 block linears (hyv.models.fp8): quantization error bounds, the two FP8Linear paths (the
dequantized weight, and torch._scaled_mm, which torch runs on the CPU too) against each other and
against the arithmetic they stand for, quantize_dit_ on the DiT, and loading/saving FP8 weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyv.models import HunyuanVideoDiT, dit_preset, load_dit, save_dit
from hyv.models.checkpoint_io import CheckpointError
from hyv.models.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    FP8Linear,
    dequantize_,
    dequantize_weight,
    dequantized_linear,
    linear_rows,
    quantize_activation_rows,
    quantize_dit_,
    quantize_weight,
    set_scaled_mm_,
    tencent_fp8_map_path,
    tencent_fp8_state_dict,
    weight_bytes,
)

# e4m3: 3 mantissa bits, so rounding to nearest is off by at most 2^-4 relative for normal values;
# below 2^-6 (subnormals, steps of 2^-9) by at most half a step, 2^-10, times the scale.
REL_STEP = 2.0**-4
SUBNORMAL_HALF_STEP = 2.0**-10


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm())


def random_dit(seed: int = 0, preset: str = "tiny") -> HunyuanVideoDiT:
    torch.manual_seed(seed)
    model = HunyuanVideoDiT(dit_preset(preset))
    for param in model.parameters():  # no zero gates: every layer changes the output
        param.data.normal_(0.0, 0.1)
    return model.eval()


def dit_inputs(model: HunyuanVideoDiT, seed: int = 0) -> tuple[torch.Tensor, ...]:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, c.in_channels, 3, 4, 6, generator=g)
    text = torch.randn(1, 7, c.text_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    pooled = torch.randn(1, c.pooled_dim, generator=g)
    return x, torch.tensor([500.0]), text, mask, pooled, torch.tensor([4000.0])


@pytest.mark.parametrize("shape", [(37, 53), (96, 64), (1, 5)])
def test_quantize_weight_round_trip_is_within_half_an_e4m3_step(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    w = torch.randn(*shape) * torch.logspace(-3, 1, shape[0])[:, None]  # rows of very different size
    q, scale = quantize_weight(w)
    assert q.dtype == FP8_DTYPE and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (shape[0],)  # one scale per output channel
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / FP8_MAX)
    back = dequantize_weight(q, scale)
    bound = REL_STEP * w.abs() + SUBNORMAL_HALF_STEP * scale[:, None]
    assert bool(((back - w).abs() <= bound * (1 + 1e-6)).all())
    # the largest |w| of each row is 448 * scale exactly: per-channel scales waste no range
    torch.testing.assert_close(back.abs().amax(dim=1), w.abs().amax(dim=1))
    assert relative_error(back, w) < 0.03  # measured 0.008-0.026


def test_an_all_zero_row_quantizes_to_zeros_with_a_unit_scale() -> None:
    w = torch.randn(3, 8)
    w[1] = 0
    q, scale = quantize_weight(w)
    assert scale[1] == 1.0 and not q[1].float().any()
    assert torch.isfinite(dequantize_weight(q, scale)).all()


def test_quantize_weight_refuses_a_non_matrix() -> None:
    with pytest.raises(ValueError, match=r"2-D \(out, in\) weight, got shape \(3, 4, 5\)"):
        quantize_weight(torch.randn(3, 4, 5))


def test_activation_rows_get_their_own_scale() -> None:
    x = torch.randn(4, 33) * torch.tensor([1e-3, 1.0, 50.0, 0.0])[:, None]
    xq, scale = quantize_activation_rows(x)
    assert xq.dtype == FP8_DTYPE and scale.shape == (4, 1)
    back = xq.float() * scale
    assert bool(((back - x).abs() <= REL_STEP * x.abs() + SUBNORMAL_HALF_STEP * scale + 1e-12).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("in_features", "out_features"), [(53, 37), (64, 96)])
def test_fp8_linear_paths_agree_and_compute_what_they_stand_for(
    dtype: torch.dtype, in_features: int, out_features: int
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    layer = FP8Linear.from_linear(linear).to(dtype)
    x = torch.randn(2, 5, in_features, dtype=dtype)

    layer.use_scaled_mm = False
    dequantized = layer(x)
    layer.use_scaled_mm = True
    scaled = layer(x)  # torch._scaled_mm on the CPU
    assert dequantized.dtype == scaled.dtype == dtype
    assert dequantized.shape == scaled.shape == (2, 5, out_features)

    # the dequantize path: F.linear with weight_fp8 * scale (rounded once to the input dtype)
    w = dequantize_weight(layer.weight, layer.weight_scale, dtype)
    assert layer.bias is not None
    torch.testing.assert_close(dequantized, nn.functional.linear(x, w, layer.bias))
    # the _scaled_mm path: fp8 rows of x times fp8 weight, both scales, fp32 accumulation
    xq, x_scale = quantize_activation_rows(x.reshape(-1, in_features))
    emulated = (xq.float() * x_scale) @ (layer.weight.float() * layer.weight_scale[:, None]).T
    emulated = (emulated + layer.bias.float()).reshape(2, 5, out_features)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 output: one rounding of the result
    torch.testing.assert_close(scaled.float(), emulated, rtol=tolerance, atol=tolerance)

    # both approximate the original layer; they differ by the activation's quantization
    reference = linear(x.float())
    assert relative_error(dequantized, reference) < 0.04  # measured 0.024-0.026
    assert relative_error(scaled, reference) < 0.05  # measured 0.034-0.038
    assert relative_error(scaled, dequantized) < 0.04  # measured 0.024-0.026


def test_the_automatic_path_dequantizes_on_the_cpu_and_after_a_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    layer = FP8Linear.from_linear(nn.Linear(64, 32)).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    expected = dequantized_linear(x, layer.weight, layer.weight_scale, layer.bias)
    assert torch.equal(layer(x), expected)  # no FP8 tensor cores on the CPU: dequantized

    # A GPU whose torch/cuBLAS refuses per-row scaling (seen on sm_120) cannot run here; the same
    # refusal, raised by a stand-in _scaled_mm on a layer that believes it has FP8 tensor cores:
    calls = []

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr("hyv.models.fp8.fp8_supported", lambda device: True)
    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    assert torch.equal(layer(x), expected) and torch.equal(layer(x), expected)
    assert len(calls) == 1 and layer.use_scaled_mm is False  # asked once, then dequantized for good
    assert "torch._scaled_mm refused a 32x64 FP8 layer" in caplog.text


def test_forward_rows_is_the_slice_of_the_full_output() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 80)
    layer = FP8Linear.from_linear(linear)
    x = torch.randn(3, 16)
    for use_scaled_mm in (False, True):
        layer.use_scaled_mm = use_scaled_mm
        torch.testing.assert_close(linear_rows(layer, x, 16, 48), layer(x)[:, 16:48])
    torch.testing.assert_close(linear_rows(linear, x, 16, 48), linear(x)[:, 16:48])


def test_moving_to_another_dtype_keeps_the_fp8_weight_and_fp32_scale_exactly() -> None:
    layer = FP8Linear.from_linear(nn.Linear(24, 40))
    weight, scale = layer.weight.detach().clone(), layer.weight_scale.clone()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        layer.to(dtype)
        assert layer.weight.dtype == FP8_DTYPE and layer.weight_scale.dtype == torch.float32
        assert layer.bias is not None and layer.bias.dtype == dtype
        assert torch.equal(layer.weight.float(), weight.float()) and torch.equal(layer.weight_scale, scale)
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias"}


def test_quantize_dit_replaces_the_block_linears_and_halves_their_weight_bytes() -> None:
    model = random_dit().to(torch.bfloat16)
    blocks = nn.ModuleList([*model.double_blocks, *model.single_blocks])
    linears = [(n, m) for n, m in blocks.named_modules() if isinstance(m, nn.Linear)]
    before = weight_bytes(blocks)

    assert quantize_dit_(model) == 13  # 2 streams x (mod, qkv, proj, fc1, fc2) + linear1, linear2, mod
    assert quantize_dit_(model) == 0  # already quantized

    fp8_names = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert all(n.startswith(("double_blocks.", "single_blocks.")) for n in fp8_names)
    assert isinstance(model.final_layer.linear, nn.Linear) and isinstance(model.img_in.proj, nn.Conv3d)
    assert isinstance(model.txt_in.input_embedder, nn.Linear)
    # each quantized layer: 1 byte per weight instead of 2, plus a 4-byte scale per output row
    saved = sum(m.weight.numel() - 4 * m.out_features for _, m in linears)
    assert weight_bytes(blocks) == before - saved
    # the 13B on the meta device: its block linears take half the bytes
    with torch.device("meta"):
        big = HunyuanVideoDiT(dit_preset("hunyuan-video-13b")).to(torch.bfloat16)
    big_blocks = nn.ModuleList([*big.double_blocks, *big.single_blocks])
    big_before = weight_bytes(big_blocks)
    assert quantize_dit_(big) == 20 * 10 + 40 * 3
    assert 0.5 < weight_bytes(big_blocks) / big_before < 0.501


def test_quantized_dit_is_close_to_the_original_and_its_two_paths_agree() -> None:
    model = random_dit()
    inputs = dit_inputs(model)
    with torch.inference_mode():
        reference = model(*inputs)
        quantize_dit_(model)
        dequantized = model(*inputs)
        assert set_scaled_mm_(model, True) == 13
        scaled = model(*inputs)
    assert relative_error(dequantized, reference) < 0.025  # measured 0.017
    assert relative_error(scaled, reference) < 0.03  # measured 0.023
    assert relative_error(scaled, dequantized) < 0.02  # measured 0.014


def test_dequantize_gives_back_plain_linears_with_the_same_output() -> None:
    model = random_dit()
    inputs = dit_inputs(model)
    quantize_dit_(model)
    with torch.inference_mode():
        fp8 = model(*inputs)
        assert dequantize_(model) == 13
        plain = model(*inputs)
    assert not any(isinstance(m, FP8Linear) for m in model.modules())
    torch.testing.assert_close(plain, fp8, rtol=1e-6, atol=1e-6)


def test_fp8_dit_saves_and_loads_in_our_format(tmp_path) -> None:
    model = random_dit()
    quantize_dit_(model)
    save_dit(model, tmp_path / "dit")
    loaded = load_dit(tmp_path / "dit")
    assert sum(isinstance(m, FP8Linear) for m in loaded.modules()) == 13
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype
        assert torch.equal(loaded.state_dict()[name].float(), tensor.float()), name
    inputs = dit_inputs(model)
    with torch.inference_mode():
        # The same weights, bit for bit (above); the forward may round differently in the last
        # place (the loaded tensors sit at other addresses, and the CPU kernels' vector paths
        # depend on alignment: 7e-7 apart on a CPU of this session, 0 on others).
        torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=1e-6, atol=1e-6)
    # a bf16 load keeps the fp8 weights as they are and casts the rest
    bf16 = load_dit(tmp_path / "dit", dtype="bf16")
    dtypes = {n: t.dtype for n, t in bf16.state_dict().items()}
    assert dtypes["single_blocks.0.linear1.weight"] == FP8_DTYPE
    assert dtypes["single_blocks.0.linear1.weight_scale"] == torch.float32
    assert dtypes["single_blocks.0.linear1.bias"] == dtypes["final_layer.linear.weight"] == torch.bfloat16


def test_tencent_scales_broadcast_per_tensor_or_per_channel() -> None:
    w = torch.randn(6, 4).to(FP8_DTYPE)
    state = {"double_blocks.0.img_attn_qkv.weight": w, "double_blocks.0.img_attn_qkv.bias": torch.zeros(6)}
    per_tensor = tencent_fp8_state_dict(state, {"double_blocks.0.img_attn_qkv": torch.tensor(0.5)})
    torch.testing.assert_close(per_tensor["double_blocks.0.img_attn_qkv.weight_scale"], torch.full((6,), 0.5))
    per_channel = tencent_fp8_state_dict(state, {"double_blocks.0.img_attn_qkv": torch.arange(6.0)[:, None]})
    torch.testing.assert_close(per_channel["double_blocks.0.img_attn_qkv.weight_scale"], torch.arange(6.0))
    with pytest.raises(CheckpointError, match=r"has 3 values; expected 1 .* or 6"):
        tencent_fp8_state_dict(state, {"double_blocks.0.img_attn_qkv": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"no scale for 'double_blocks\.0\.img_attn_qkv'"):
        tencent_fp8_state_dict(state, {"double_blocks.1.img_attn_qkv": torch.ones(1)})


def test_tencent_map_file_sits_beside_the_weights() -> None:
    path = tencent_fp8_map_path("/ckpts/x/transformers/mp_rank_00_model_states_fp8.pt")
    assert str(path) == "/ckpts/x/transformers/mp_rank_00_model_states_fp8_map.pt"
