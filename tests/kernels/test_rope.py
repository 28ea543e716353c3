from __future__ import annotations

import pytest
import torch

from hyv import kernels
from hyv.models import ops
from tests.kernels.conftest import DEVICE, DTYPES, assert_close, launched, upcast

HEAD_DIMS = [128, 96, 130, 16]  # 130: D/2 = 65 pairs, a non-power-of-two block
HEADS = [3, 24]
SEQ = 5
AXES = (16, 56, 56)


def _tables(seq: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    ang = torch.randn(seq, d // 2, device=DEVICE)
    return ang.cos().repeat_interleave(2, dim=1), ang.sin().repeat_interleave(2, dim=1)


def test_ops_rotary_is_reference_when_unfused(unfused: None) -> None:
    x = torch.randn(2, SEQ, 3, 96).bfloat16()
    cos, sin = _tables(SEQ, 96)
    assert torch.equal(
        kernels.apply_rotary_emb_reference(x, cos.cpu(), sin.cpu()),
        ops.apply_rotary_emb(x, cos.cpu(), sin.cpu()),
    )


def test_tables_match_diffusers() -> None:
    tv = pytest.importorskip(
        "diffusers.models.transformers.transformer_hunyuan_video", reason="diffusers absent"
    )
    t, h, w = 3, 4, 5
    ref_cos, ref_sin = tv.HunyuanVideoRotaryPosEmbed(1, 1, list(AXES), 256.0)(torch.zeros(1, 16, t, h, w))
    cos, sin = kernels.rope_tables(t, h, w, AXES, 256.0, "cpu", torch.float32)
    assert cos.shape == (t * h * w, sum(AXES))
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_tables_cached_per_key() -> None:
    a = kernels.rope_tables(2, 3, 4, AXES, 256.0, "cpu", torch.float32)
    assert kernels.rope_tables(2, 3, 4, [16, 56, 56], 256, torch.device("cpu"), torch.float32)[0] is a[0]
    b = kernels.rope_tables(2, 3, 4, AXES, 256.0, "cpu", torch.bfloat16)
    assert b[0] is not a[0] and b[0].dtype == torch.bfloat16
    assert torch.equal(b[0], a[0].bfloat16())
    with torch.inference_mode():  # a table first built in inference mode stays usable for training
        c = kernels.rope_tables(1, 2, 2, AXES, 256.0, "cpu", torch.float32)
    assert not c[0].is_inference()
    with pytest.raises(ValueError):
        kernels.rope_tables(1, 1, 1, (16, 56), 256.0)


def _make_x(b: int, seq: int, h: int, d: int, dtype: torch.dtype, strided: bool) -> torch.Tensor:
    if strided:  # q out of a fused (B, L, 3, H, D) projection
        return torch.randn(b, seq, 3, h, d, device=DEVICE).to(dtype)[:, :, 1].requires_grad_()
    return torch.randn(b, seq, h, d, device=DEVICE).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("strided", [False, True])
def test_rope_fwd_bwd(fused: None, dtype: torch.dtype, d: int, strided: bool) -> None:
    x = _make_x(2, SEQ, HEADS[0], d, dtype, strided)
    cos, sin = _tables(SEQ, d)
    n0, b0 = launched("rope_fwd"), launched("rope_bwd")
    y = kernels.apply_rotary_emb(x, cos, sin)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert launched("rope_fwd") == n0 + 1 and launched("rope_bwd") == b0 + 1, "Triton path did not run"
    assert y.dtype == dtype and y.is_contiguous()
    (xr,) = upcast(x)
    yr = kernels.apply_rotary_emb_reference(xr, cos, sin)
    yr.backward(dy.float())
    assert_close(y, yr, dtype, "out")
    assert_close(x.grad, xr.grad, dtype, "dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [128, 130])
@pytest.mark.parametrize("prefix", [SEQ, 3])
def test_rope_qk_one_launch(fused: None, dtype: torch.dtype, d: int, prefix: int) -> None:
    # prefix < L: the single-stream blocks' text tokens after the video tokens pass through
    q = _make_x(2, SEQ, HEADS[1], d, dtype, strided=True)
    k = _make_x(2, SEQ, 2, d, dtype, strided=False)  # a different head count is allowed
    cos, sin = _tables(prefix, d)
    n0, b0 = launched("rope_qk_fwd"), launched("rope_qk_bwd")
    yq, yk = kernels.apply_rotary_emb_qk(q, k, cos, sin)
    gq, gk = torch.randn_like(yq), torch.randn_like(yk)
    torch.autograd.backward([yq, yk], [gq, gk])
    assert launched("rope_qk_fwd") == n0 + 1 and launched("rope_qk_bwd") == b0 + 1
    qr, kr = upcast(q, k)
    yqr, ykr = kernels.apply_rotary_emb_qk_reference(qr, kr, cos, sin)
    torch.autograd.backward([yqr, ykr], [gq.float(), gk.float()])
    for name, a, b in [("q", yq, yqr), ("k", yk, ykr), ("dq", q.grad, qr.grad), ("dk", k.grad, kr.grad)]:
        assert_close(a, b, dtype, name)
    if prefix < SEQ:
        assert torch.equal(yq[:, prefix:], q.detach()[:, prefix:])


def test_rope_rejects_mismatched_tables() -> None:
    x = torch.randn(1, SEQ, 2, 16)
    cos, sin = _tables(SEQ - 1, 16)
    with pytest.raises(ValueError):
        kernels.apply_rotary_emb(x, cos.cpu(), sin.cpu())  # only the qk variant takes a prefix table
