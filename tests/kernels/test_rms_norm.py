from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyv import kernels
from hyv.models import ops
from tests.kernels.conftest import DEVICE, DTYPES, assert_close, launched, upcast

HIDDEN = [3072, 3070, 130, 96]
ROWS = [3, 7]
HEAD_DIMS = [128, 96, 130]
EPS = 1e-6


def _make_x(rows: int, d: int, dtype: torch.dtype, strided: bool) -> torch.Tensor:
    if strided:  # (2, rows, d) read out of a wider, transposed buffer: non-unit row strides
        x = torch.randn(rows, 2, d + 5, device=DEVICE).to(dtype).transpose(0, 1)[..., :d]
        assert not x.is_contiguous()
    else:
        x = torch.randn(2, rows, d, device=DEVICE).to(dtype)
    return x.requires_grad_()


def test_ops_rms_norm_is_reference_when_unfused(unfused: None) -> None:
    x, w = torch.randn(3, 5, 96).bfloat16(), torch.randn(96).bfloat16()
    assert torch.equal(kernels.rms_norm_reference(x, w, EPS), ops.rms_norm(x, w, EPS))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HIDDEN)
@pytest.mark.parametrize("rows,strided", [(ROWS[0], False), (ROWS[1], True)])
def test_rms_norm_fwd_bwd(fused: None, dtype: torch.dtype, d: int, rows: int, strided: bool) -> None:
    x = _make_x(rows, d, dtype, strided)
    w = (1 + 0.1 * torch.randn(d, device=DEVICE)).to(dtype).requires_grad_()
    n0, b0 = launched("rms_norm_fwd"), launched("rms_norm_bwd")
    y = kernels.rms_norm(x, w, EPS)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert launched("rms_norm_fwd") == n0 + 1 and launched("rms_norm_bwd") == b0 + 1, (
        "Triton path did not run"
    )
    assert y.dtype == dtype and y.is_contiguous()

    xr, wr = upcast(x, w)
    yr = kernels.rms_norm_reference(xr, wr, EPS)
    yr.backward(dy.float())
    assert_close(y, yr, dtype, "out")
    assert_close(x.grad, xr.grad, dtype, "dx")
    assert_close(w.grad, wr.grad, dtype, "dweight")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_no_weight_and_mixed_dtype(fused: None, dtype: torch.dtype) -> None:
    x = _make_x(5, 130, dtype, strided=False)
    y = kernels.rms_norm(x, None, EPS)
    assert y.dtype == dtype
    assert_close(y, kernels.rms_norm_reference(x.detach().float(), None, EPS), dtype, "out (no weight)")
    # fp32 weight on a low-precision x promotes, like the reference
    w = torch.randn(130, device=DEVICE)
    assert kernels.rms_norm(x, w, EPS).dtype == kernels.rms_norm_reference(x, w, EPS).dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_rms_norm_qk_one_launch(fused: None, dtype: torch.dtype, d: int) -> None:
    B, L, H = 2, 3, 4
    qkv = torch.randn(B, L, 3, H, d, device=DEVICE).to(dtype).requires_grad_()
    q, k = qkv[:, :, 0], qkv[:, :, 1]  # strided views of one projection, as in the DiT
    assert not q.is_contiguous()
    wq = (1 + 0.1 * torch.randn(d, device=DEVICE)).to(dtype).requires_grad_()
    wk = (1 + 0.1 * torch.randn(d, device=DEVICE)).to(dtype).requires_grad_()
    n0, b0 = launched("rms_norm_qk_fwd"), launched("rms_norm_qk_bwd")
    yq, yk = kernels.rms_norm_qk(q, k, wq, wk, EPS)
    gq, gk = torch.randn_like(yq), torch.randn_like(yk)
    torch.autograd.backward([yq, yk], [gq, gk])
    assert launched("rms_norm_qk_fwd") == n0 + 1 and launched("rms_norm_qk_bwd") == b0 + 1

    qkvr, wqr, wkr = upcast(qkv, wq, wk)
    yqr, ykr = kernels.rms_norm_qk_reference(qkvr[:, :, 0], qkvr[:, :, 1], wqr, wkr, EPS)
    torch.autograd.backward([yqr, ykr], [gq.float(), gk.float()])
    assert_close(yq, yqr, dtype, "q out")
    assert_close(yk, ykr, dtype, "k out")
    assert_close(qkv.grad, qkvr.grad, dtype, "dq/dk")
    assert_close(wq.grad, wqr.grad, dtype, "dq_weight")
    assert_close(wk.grad, wkr.grad, dtype, "dk_weight")


def test_switch_off_uses_reference() -> None:
    x, w = torch.randn(2, 3, 96), torch.randn(96)
    before = kernels.fused_enabled()
    kernels.set_fused_enabled(False)
    try:
        n0 = launched("rms_norm_fwd")
        assert torch.equal(kernels.rms_norm(x, w, EPS), kernels.rms_norm_reference(x, w, EPS))
        assert launched("rms_norm_fwd") == n0
    finally:
        kernels.set_fused_enabled(before)


def test_import_and_fallback_without_triton() -> None:
    # A machine without triton (macOS, aarch64): import works and every op falls back.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from hyv import kernels\n"
        "assert not kernels.triton_available()\n"
        "x = torch.randn(2, 3, 96)\n"
        "y = kernels.rms_norm(x, torch.ones(96), 1e-6)\n"
        "assert torch.equal(y, kernels.rms_norm_reference(x, torch.ones(96), 1e-6))\n"
        "assert sum(kernels.LAUNCHES.values()) == 0\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
