"""3D rotary embedding (HunyuanVideo convention) for q and k in one fused launch, forward and
backward, plus the cached cos/sin table builder.

Convention (models/ops.apply_rotary_emb): the head dim is D/2 interleaved pairs (a, b) ->
(a*cos - b*sin, b*cos + a*sin), each frequency repeated twice in the (L, D) tables. Math in fp32,
output in x's dtype. The tables are constants: no gradient flows to cos/sin (if they require grad
the reference path runs instead, which does propagate it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from hyv.kernels._common import count_launch, lazy_kernels, next_pow2, use_triton

__all__ = [
    "apply_rotary_emb",
    "apply_rotary_emb_qk",
    "apply_rotary_emb_qk_reference",
    "apply_rotary_emb_reference",
    "rope_tables",
]


def apply_rotary_emb_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, L, H, D) with tables (Lr, D), Lr <= L; tokens l >= Lr pass through unchanged
    (Lr == L is models/ops.apply_rotary_emb exactly)."""
    n = cos.shape[0]
    if n != x.shape[1]:
        return torch.cat([apply_rotary_emb_reference(x[:, :n], cos, sin), x[:, n:]], dim=1)
    x32 = x.float()
    a, b = x32.unflatten(-1, (-1, 2)).unbind(-1)  # (B, L, H, D/2) each
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)  # (B, L, H, D): (-b, a) pairs
    cos_ = cos.float()[None, :, None, :]  # (1, L, 1, D)
    sin_ = sin.float()[None, :, None, :]
    return (x32 * cos_ + rotated * sin_).to(x.dtype)


def apply_rotary_emb_qk_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return apply_rotary_emb_reference(q, cos, sin), apply_rotary_emb_reference(k, cos, sin)


@lazy_kernels
def _kernel() -> Any:
    from hyv.kernels._rope_kernels import _rope_kernel

    return _rope_kernel


def _launch(
    q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, backward: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One launch over B*L programs; returns contiguous outputs with q's / k's shapes."""
    B, L, Hq, D = q.shape
    # the kernel indexes the tables densely; they are built contiguous, so this is a no-op
    cos, sin = cos.contiguous(), sin.contiguous()
    # inputs are read through their (b, l, h) strides; only a non-unit last stride forces a copy
    q = q if q.stride(-1) == 1 else q.contiguous()
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if k is not None:
        k = k if k.stride(-1) == 1 else k.contiguous()
        ko: torch.Tensor | None = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        kk, kko, Hk = k, ko, k.shape[2]
    else:
        ko, kk, kko, Hk = None, q, qo, 0
    _kernel()[(B * L,)](
        q, qo, q.stride(0), q.stride(1), q.stride(2), Hq,
        kk, kko, kk.stride(0), kk.stride(1), kk.stride(2), Hk,
        cos, sin, L, cos.shape[0], D,
        HAS_K=k is not None, BACKWARD=backward,
        BLOCK_H=next_pow2(max(Hq, Hk)), BLOCK_P=next_pow2(D // 2),
    )  # fmt: skip
    count_launch(("rope_qk" if k is not None else "rope") + ("_bwd" if backward else "_fwd"))
    return qo, ko


class _RopeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _launch(x, None, cos, sin, backward=False)[0]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        return _launch(dy, None, cos, sin, backward=True)[0], None, None


class _RopeQKFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx.save_for_backward(cos, sin)
        return _launch(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(
        ctx: Any, dq: torch.Tensor | None, dk: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        if dq is None or dk is None:  # one output unused: rotate the other alone
            grad = dq if dq is not None else dk
            assert grad is not None
            g = _launch(grad, None, cos, sin, backward=True)[0]
            return (g, None, None, None) if dq is not None else (None, g, None, None)
        gq, gk = _launch(dq, dk, cos, sin, backward=True)
        return gq, gk, None, None


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, prefix_ok: bool) -> None:
    ok_len = cos.shape[0] <= x.shape[1] if prefix_ok else cos.shape[0] == x.shape[1]
    if x.ndim != 4 or cos.ndim != 2 or not ok_len or cos.shape[1] != x.shape[3] or sin.shape != cos.shape:
        raise ValueError(
            f"rope tables {tuple(cos.shape)} do not match x (L, D) = {(x.shape[1], x.shape[-1])}"
        )
    if x.shape[-1] % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {x.shape[-1]}")


def _fusable(cos: torch.Tensor, sin: torch.Tensor, *xs: torch.Tensor) -> bool:
    return (
        not (cos.requires_grad or sin.requires_grad)
        and all(x.numel() > 0 for x in xs)
        and use_triton(*xs, cos, sin)
    )


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, L, H, D) rotated with tables (L, D); drop-in for models/ops.apply_rotary_emb."""
    _check_tables(x, cos, sin, prefix_ok=False)
    if not _fusable(cos, sin, x):
        return apply_rotary_emb_reference(x, cos, sin)
    y: torch.Tensor = _RopeFn.apply(x, cos, sin)
    return y


def apply_rotary_emb_qk(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B, L, Hq, D) and k (B, L, Hk, D) in one launch.

    The tables may cover only a prefix (Lr, D), Lr <= L: tokens past it (the text tokens after the
    video tokens in the single-stream blocks) are passed through, which saves the slice + cat.
    """
    _check_tables(q, cos, sin, prefix_ok=True)
    _check_tables(k, cos, sin, prefix_ok=True)
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1] or not _fusable(cos, sin, q, k):
        return apply_rotary_emb_qk_reference(q, k, cos, sin)
    yq, yk = _RopeQKFn.apply(q, k, cos, sin)
    return yq, yk


@functools.lru_cache(maxsize=32)
def _rope_tables_cached(
    t: int, h: int, w: int, axes_dim: tuple[int, ...], theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # Built outside inference mode and without autograd: a table first built inside
    # torch.inference_mode() would otherwise be an inference tensor, unusable in a later training step.
    with torch.inference_mode(False), torch.no_grad():
        axes = [torch.arange(n, dtype=torch.float32, device=device) for n in (t, h, w)]
        grids = torch.meshgrid(*axes, indexing="ij")  # 3 x (t, h, w): T-major token order
        cos_parts, sin_parts = [], []
        for grid, dim in zip(grids, axes_dim, strict=True):
            # fp32 throughout, as diffusers' get_1d_rotary_pos_embed (freqs_dtype=float32) does
            inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
            angles = torch.outer(grid.reshape(-1), inv_freq)  # (L, dim/2)
            cos_parts.append(angles.cos().repeat_interleave(2, dim=1))  # (L, dim)
            sin_parts.append(angles.sin().repeat_interleave(2, dim=1))
        cos = torch.cat(cos_parts, dim=1).to(dtype).contiguous()  # (L, sum(axes_dim))
        sin = torch.cat(sin_parts, dim=1).to(dtype).contiguous()
    return cos, sin


def _canonical_device(device: torch.device | str | None) -> torch.device:
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None:  # "cuda" and "cuda:0" must share one cache entry
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def rope_tables(
    t: int,
    h: int,
    w: int,
    axes_dim: Sequence[int] = (16, 56, 56),
    theta: float = 256.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (t*h*w, sum(axes_dim)) for the patched latent grid, T-major token order.

    Same math as diffusers' HunyuanVideoRotaryPosEmbed.
    Cached per (t, h, w, axes_dim, theta, device, dtype): the returned tensors are SHARED between
    callers and must not be modified in place (clone first if you need to).
    """
    if len(axes_dim) != 3 or any(int(d) <= 0 or int(d) % 2 for d in axes_dim):
        raise ValueError(f"axes_dim must be 3 positive even sizes, got {tuple(axes_dim)}")
    return _rope_tables_cached(
        int(t),
        int(h),
        int(w),
        tuple(int(d) for d in axes_dim),
        float(theta),
        _canonical_device(device),
        dtype,
    )
