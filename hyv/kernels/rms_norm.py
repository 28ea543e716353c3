"""Fused RMSNorm with weight (forward + backward), and a q/k variant normalizing both in one launch.

Numerics follow models/ops.rms_norm: fp32 statistics, the normalized value rounded to x's dtype,
then multiplied by the weight in the promoted dtype (so bf16 x with an fp32 weight gives fp32,
like the reference). The backward treats that rounding as identity (as autograd does for .to())
and accumulates the weight gradient in fp32 per program, summed once at the end.

One kernel serves both entry points: it takes two "segments" (q and k); plain rms_norm launches
it with an empty second segment.
"""

from __future__ import annotations

from typing import Any

import torch

from hyv.kernels._common import (
    count_launch,
    lazy_kernels,
    max_programs,
    next_pow2,
    row_layout,
    rows_per_program,
    use_triton,
)

__all__ = ["rms_norm", "rms_norm_qk", "rms_norm_qk_reference", "rms_norm_reference"]


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Same math as models/ops.rms_norm; the fallback and the test oracle."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = normed.to(x.dtype)
    return out * weight if weight is not None else out


def rms_norm_qk_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_reference(q, q_weight, eps), rms_norm_reference(k, k_weight, eps)


@lazy_kernels
def _kernels() -> tuple[Any, Any]:
    from hyv.kernels import _rms_norm_kernels as K

    return K._fwd_kernel, K._bwd_kernel


# A segment is one tensor to normalize: (x, weight).
_Seg = tuple[torch.Tensor, torch.Tensor]


def _launch_fwd(segs: list[_Seg], eps: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns [(y, rstd)] per segment; y is contiguous with x's shape."""
    fwd, _ = _kernels()
    D = segs[0][0].shape[-1]
    BLOCK_D = next_pow2(D)
    ROWS = rows_per_program(BLOCK_D)
    args: list[Any] = []
    outs = []
    tiles = []
    for x, w in segs:
        xl, sizes, strides = row_layout(x)
        n_rows = sizes[0] * sizes[1] * sizes[2]
        y = torch.empty(x.shape, dtype=torch.result_type(x, w), device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        outs.append((y, rstd))
        tiles.append(-(-n_rows // ROWS))
        args.append([xl, w, y, rstd, n_rows, sizes[1], sizes[2], *strides])
    if len(segs) == 1:  # empty second segment: same pointers, zero rows, zero tiles
        args.append([*args[0][:4], 0, *args[0][5:]])
        tiles.append(0)
    grid = (tiles[0] + tiles[1],)
    fwd[grid](*args[0], tiles[0], *args[1], D, eps, BLOCK_D=BLOCK_D, ROWS=ROWS)
    count_launch("rms_norm_qk_fwd" if len(segs) == 2 else "rms_norm_fwd")
    return outs


def _launch_bwd(
    segs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """segs: [(x, weight, rstd, dy)] -> [(dx, dweight_fp32)] per segment."""
    _, bwd = _kernels()
    D = segs[0][0].shape[-1]
    BLOCK_D = next_pow2(D)
    ROWS = rows_per_program(BLOCK_D)
    cap = max_programs(segs[0][0].device)
    args: list[Any] = []
    nprogs = []
    dxs = []
    for x, w, rstd, dy in segs:
        xl, sizes, strides = row_layout(x)
        n_rows = sizes[0] * sizes[1] * sizes[2]
        dy = dy.contiguous()  # autograd grads are almost always contiguous already; no-op then
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dxs.append(dx)
        nprogs.append(max(1, min(cap, -(-n_rows // ROWS))))
        args.append([xl, w, dy, dx, rstd, n_rows, sizes[1], sizes[2], *strides])
    if len(segs) == 1:
        args.append([*args[0][:5], 0, *args[0][6:]])
        nprogs.append(0)
    dwp = torch.empty(nprogs[0] + nprogs[1], D, dtype=torch.float32, device=segs[0][0].device)
    bwd[(nprogs[0] + nprogs[1],)](
        *args[0], nprogs[0], *args[1], nprogs[1], dwp, D, BLOCK_D=BLOCK_D, ROWS=ROWS
    )
    count_launch("rms_norm_qk_bwd" if len(segs) == 2 else "rms_norm_bwd")
    out = [(dxs[0], dwp[: nprogs[0]].sum(0))]
    if len(segs) == 2:
        out.append((dxs[1], dwp[nprogs[0] :].sum(0)))
    return out


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        ((y, rstd),) = _launch_fwd([(x, w)], eps)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, rstd = ctx.saved_tensors
        ((dx, dw),) = _launch_bwd([(x, w, rstd, dy)])
        return dx, dw.to(w.dtype), None


class _RMSNormQKFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (yq, rq), (yk, rk) = _launch_fwd([(q, wq), (k, wk)], eps)
        ctx.save_for_backward(q, k, wq, wk, rq, rk)
        return yq, yk

    @staticmethod
    def backward(
        ctx: Any, dyq: torch.Tensor | None, dyk: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        q, k, wq, wk, rq, rk = ctx.saved_tensors
        # an unused output gets a None grad; zeros keep the single launch simple
        dyq = torch.zeros(q.shape, dtype=q.dtype, device=q.device) if dyq is None else dyq
        dyk = torch.zeros(k.shape, dtype=k.dtype, device=k.device) if dyk is None else dyk
        (dq, dwq), (dk, dwk) = _launch_bwd([(q, wq, rq, dyq), (k, wk, rk, dyk)])
        return dq, dk, dwq.to(wq.dtype), dwk.to(wk.dtype), None


def _weight_or_ones(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    # weight=None: a ones vector in x's dtype gives the same values and output dtype as the reference
    return torch.ones(x.shape[-1], dtype=x.dtype, device=x.device) if w is None else w


def _fusable(x: torch.Tensor, w: torch.Tensor | None) -> bool:
    return x.numel() > 0 and (w is None or (w.ndim == 1 and w.shape[0] == x.shape[-1])) and use_triton(x, w)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of x (..., D) with fp32 statistics; output in x's dtype (promoted
    with the weight's). Triton on CUDA (or under TRITON_INTERPRET=1), the reference otherwise."""
    if not _fusable(x, weight):
        return rms_norm_reference(x, weight, eps)
    y: torch.Tensor = _RMSNormFn.apply(x, _weight_or_ones(x, weight), float(eps))
    return y


def rms_norm_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q (..., D) and k (..., D) (e.g. (B, L, H, D) qk-norm) in one launch each way."""
    if not (
        _fusable(q, q_weight)
        and _fusable(k, k_weight)
        and q.shape[-1] == k.shape[-1]
        and q.device == k.device
        and use_triton(q, k)
    ):
        return rms_norm_qk_reference(q, k, q_weight, k_weight, eps)
    yq, yk = _RMSNormQKFn.apply(q, k, _weight_or_ones(q, q_weight), _weight_or_ones(k, k_weight), float(eps))
    return yq, yk
