"""The single entry points the model blocks call for their memory-bound ops and attention.

Every block in hyv/models/ reaches attention, RMSNorm, rotary embedding and adaLN modulation only
through these functions. They dispatch to `hyv/kernels/`: fused Triton kernels on CUDA tensors (or on
CPU under TRITON_INTERPRET=1), the pure-PyTorch references otherwise or when the fused path is
switched off (`hyv.kernels.set_fused_enabled(False)` / HYV_FUSED_KERNELS=0). The attention backend
(FlashAttention-3/2, xformers, SDPA) is picked by `hyv.kernels.attention`.

The engine may replace the attention implementation from outside (sequence parallelism) with
`use_attention`, without touching the blocks.

Layout convention: attention tensors are (B, L, H, D) - batch, sequence, heads, head dim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from hyv import kernels

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_attention_impl: AttentionFn | None = None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over (B, L, H, D) tensors; returns (B, Lq, H, D).

    key_padding_mask: (B, Lk) bool, True where the key is a real token. Padded keys get no weight,
    so padded text tokens cannot influence any output. The values at padded *query* rows are
    backend-dependent (zero for the packed varlen backends) and must not be read.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[1]):
        expected = (k.shape[0], k.shape[1])
        raise ValueError(f"key_padding_mask shape {tuple(key_padding_mask.shape)} != (B, Lk) = {expected}")
    if _attention_impl is not None:
        return _attention_impl(q, k, v, key_padding_mask)
    return kernels.attention(q, k, v, key_padding_mask)


@contextlib.contextmanager
def use_attention(impl: AttentionFn) -> Iterator[None]:
    """Route every `attention` call through `impl` inside the block (e.g. sequence parallelism)."""
    global _attention_impl
    previous, _attention_impl = _attention_impl, impl
    try:
        yield
    finally:
        _attention_impl = previous


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with fp32 statistics; output in x's dtype."""
    return kernels.rms_norm(x, weight, eps)


def rms_norm_qk(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """QK-norm: RMSNorm of q and k (B, L, H, D) over the head dim, one fused launch."""
    return kernels.rms_norm_qk(q, k, q_weight, k_weight, eps)


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo's rotary embedding on x (B, L, H, D) with cos/sin tables (L, D).

    The head dim is read as D/2 interleaved pairs (a, b) -> (a*cos - b*sin, b*cos + a*sin); each
    frequency appears twice in a row in the tables. Computed in fp32, returned in x's dtype.
    """
    return kernels.apply_rotary_emb(x, cos, sin)


def apply_rotary_emb_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (B, L, H, D) in one launch; tables (Lr, D) with Lr <= L rotate the first Lr
    tokens (the video tokens) and pass the rest (text tokens) through unchanged."""
    return kernels.apply_rotary_emb_qk(q, k, cos, sin)


def rope_tables(
    t: int, h: int, w: int, axes_dim: tuple[int, ...], theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached fp32 cos/sin tables (t*h*w, sum(axes_dim)) of the 3D RoPE over the patched grid.

    Shared between callers: never modify them in place."""
    return kernels.rope_tables(t, h, w, axes_dim, theta, device, torch.float32)


def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """LayerNorm without affine, then adaLN modulation x * (1 + scale) + shift.

    x: (B, L, D); shift, scale: (B, D).
    """
    return kernels.layernorm_modulate(x, shift, scale, eps)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y with gate (B, D) broadcast over the sequence of x, y (B, L, D)."""
    return kernels.gated_residual(x, gate, y)
