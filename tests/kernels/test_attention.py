from __future__ import annotations

import importlib
import logging

import pytest
import torch

from hyv import kernels
from hyv.models import ops
from tests.kernels.conftest import DEVICE

# the module, not the same-named function that kernels/__init__ exports
attn = importlib.import_module("hyv.kernels.attention")

B, H, D = 3, 2, 16
VALID = [11, 7, 9]  # valid tokens per sample (video + real text); padding at the end
SEQ = 11


def _mask(lengths: list[int], seq: int = SEQ) -> torch.Tensor:
    return torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]  # (B, L) True = real


def _qkv(
    seq: int = SEQ, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    return [torch.randn(B, seq, H, D, device=device).to(dtype).requires_grad_() for _ in range(3)]


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYV_ATTENTION_BACKEND", raising=False)
    kernels.set_attention_backend(None)


def test_pack_unpack_roundtrip() -> None:
    x = torch.randn(B, SEQ, H, D)
    mask = _mask(VALID)
    packed, cu, max_len, idx = kernels.pack_padded(x, mask)
    assert packed.shape == (sum(VALID), H, D)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 11, 18, 27] and max_len == 11
    assert torch.equal(packed, x[mask])
    back = kernels.unpack(packed, idx, B, SEQ)
    assert torch.equal(back[mask], x[mask]) and not back[~mask].any()


def test_packed_attention_equals_masked_at_valid_rows() -> None:
    q, k, v = _qkv()
    mask = _mask(VALID)
    out = attn.attention_varlen(q, k, v, mask, attn.packed_attention_reference)  # the varlen pipeline
    ref = ops.attention(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert not out[~mask].any(), "padded query rows must come back as zeros"
    # gradients through pack/unpack agree when only valid rows are read (the model's contract)
    g = torch.randn_like(out) * mask[..., None, None]
    grads = torch.autograd.grad(out, [q, k, v], g)
    ref_grads = torch.autograd.grad(ref, [q, k, v], g)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_keys_only_mask_with_other_query_length() -> None:
    q = torch.randn(B, 4, H, D)
    _, k, v = (t.detach() for t in _qkv())
    mask = _mask(VALID)
    out = attn.attention_varlen(q, k, v, mask, attn.packed_attention_reference)
    torch.testing.assert_close(out, ops.attention(q, k, v, key_padding_mask=mask), atol=1e-5, rtol=1e-5)


def test_auto_is_sdpa_on_cpu_and_matches_ops(caplog: pytest.LogCaptureFixture) -> None:
    q, k, v = (t.detach() for t in _qkv())
    mask = _mask(VALID)
    attn._logged.clear()
    with caplog.at_level(logging.INFO, logger="hyv.kernels.attention"):
        out = kernels.attention(q, k, v, mask)
        kernels.attention(q, k, v, mask)
    assert torch.equal(out, ops.attention(q, k, v, key_padding_mask=mask))
    msgs = [r.getMessage() for r in caplog.records if "attention backend" in r.getMessage()]
    assert len(msgs) == 1 and "sdpa" in msgs[0], msgs


def test_backend_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = (t.detach() for t in _qkv())
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        kernels.set_attention_backend("nope")
    monkeypatch.setenv("HYV_ATTENTION_BACKEND", "torch")
    assert attn.select_backend(q) == "sdpa"
    for name in ("fa3", "fa2", "xformers"):
        with pytest.raises(ValueError, match=name):  # absent package, or present but needs CUDA/fp16
            kernels.attention(q, k, v, backend=name)
        if name not in kernels.available_backends():
            with pytest.raises(ValueError, match="not installed"):
                kernels.set_attention_backend(name)


@pytest.mark.parametrize("backend", ["fa3", "fa2", "xformers"])
def test_gpu_backend_matches_sdpa(backend: str) -> None:
    if backend not in kernels.available_backends():
        pytest.skip(f"{backend}: {attn._import_error(backend)}")
    if DEVICE.type != "cuda":
        pytest.skip(f"{backend} needs a CUDA device")
    q, k, v = _qkv(dtype=torch.bfloat16, device=DEVICE)
    reason = attn._unusable_reason(backend, q)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    mask = _mask(VALID).to(DEVICE)
    out = kernels.attention(q, k, v, mask, backend=backend)
    ref = ops.attention(q.float(), k.float(), v.float(), key_padding_mask=mask)
    torch.testing.assert_close(out[mask].float(), ref[mask], atol=2e-2, rtol=2e-2)
    assert not out[~mask].any()
    dense = kernels.attention(q, k, v, None, backend=backend)
    torch.testing.assert_close(
        dense.float(), ops.attention(q.float(), k.float(), v.float()), atol=2e-2, rtol=2e-2
    )
