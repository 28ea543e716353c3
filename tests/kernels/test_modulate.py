from __future__ import annotations

import pytest
import torch

from hyv import kernels
from hyv.models import ops
from tests.kernels.conftest import DEVICE, DTYPES, assert_close, launched, upcast

HIDDEN = [3072, 3070, 130, 96]
BATCH = 2
SEQ = [3, 6]
EPS = 1e-6


def _make_x(seq: int, d: int, dtype: torch.dtype, strided: bool) -> torch.Tensor:
    if strided:  # (B, L, d) out of a wider, batch-minor buffer
        x = torch.randn(seq, BATCH, d + 3, device=DEVICE).to(dtype).transpose(0, 1)[..., :d]
        assert not x.is_contiguous()
    else:
        x = torch.randn(BATCH, seq, d, device=DEVICE).to(dtype)
    return (x * 2 + 0.5).requires_grad_() if not strided else (x * 2 + 0.5).detach().requires_grad_()


def _mod_vectors(d: int, dtype: torch.dtype, n: int) -> list[torch.Tensor]:
    # chunks of one (B, n*d) modulation output: strided (B, d) views, as the DiT produces them
    mod = (0.5 * torch.randn(BATCH, n * d, device=DEVICE)).to(dtype).requires_grad_()
    return [mod, *mod.chunk(n, dim=-1)]


def test_ops_is_reference_when_unfused(unfused: None) -> None:
    x, s, c = torch.randn(2, 3, 96).half(), torch.randn(2, 96).half(), torch.randn(2, 96).half()
    assert torch.equal(
        kernels.layernorm_modulate_reference(x, s, c, EPS), ops.layernorm_modulate(x, s, c, EPS)
    )
    assert torch.equal(kernels.gated_residual_reference(x, s, x), ops.gated_residual(x, s, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HIDDEN)
@pytest.mark.parametrize("seq,strided", [(SEQ[0], False), (SEQ[1], True)])
def test_layernorm_modulate_fwd_bwd(fused: None, dtype: torch.dtype, d: int, seq: int, strided: bool) -> None:
    x = _make_x(seq, d, dtype, strided)
    mod, shift, scale = _mod_vectors(d, dtype, 2)
    n0, b0 = launched("layernorm_modulate_fwd"), launched("layernorm_modulate_bwd")
    y = kernels.layernorm_modulate(x, shift, scale, EPS)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert launched("layernorm_modulate_fwd") == n0 + 1 and launched("layernorm_modulate_bwd") == b0 + 1
    assert y.dtype == dtype and y.is_contiguous()
    xr, modr = upcast(x, mod)
    shiftr, scaler = modr.chunk(2, dim=-1)
    yr = kernels.layernorm_modulate_reference(xr, shiftr, scaler, EPS)
    yr.backward(dy.float())
    assert_close(y, yr, dtype, "out")
    assert_close(x.grad, xr.grad, dtype, "dx")
    assert_close(mod.grad, modr.grad, dtype, "dshift/dscale")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HIDDEN)
@pytest.mark.parametrize("seq,strided", [(SEQ[0], False), (SEQ[1], True)])
def test_gated_residual_fwd_bwd(fused: None, dtype: torch.dtype, d: int, seq: int, strided: bool) -> None:
    x = _make_x(seq, d, dtype, strided=False)
    y = _make_x(seq, d, dtype, strided)
    mod, _, gate = _mod_vectors(d, dtype, 2)
    n0, b0 = launched("gated_residual_fwd"), launched("gated_residual_bwd")
    out = kernels.gated_residual(x, gate, y)
    dout = torch.randn_like(out)
    out.backward(dout)
    assert launched("gated_residual_fwd") == n0 + 1 and launched("gated_residual_bwd") == b0 + 1
    assert out.dtype == dtype and out.is_contiguous()
    xr, modr, yr = upcast(x, mod, y)
    outr = kernels.gated_residual_reference(xr, modr.chunk(2, dim=-1)[1], yr)
    outr.backward(dout.float())
    assert_close(out, outr, dtype, "out")
    assert_close(x.grad, xr.grad, dtype, "dx")
    assert_close(y.grad, yr.grad, dtype, "dy")
    assert_close(mod.grad, modr.grad, dtype, "dgate")


def test_mixed_dtype_promotes_like_reference(fused: None) -> None:
    x = torch.randn(BATCH, 3, 96, device=DEVICE).bfloat16()
    s, c = torch.randn(BATCH, 96, device=DEVICE), torch.randn(BATCH, 96, device=DEVICE)
    out = kernels.layernorm_modulate(x, s, c, EPS)
    ref = kernels.layernorm_modulate_reference(x.float(), s, c, EPS)
    assert out.dtype == torch.float32
    assert_close(out, ref, torch.bfloat16, "bf16 x, fp32 vectors")
