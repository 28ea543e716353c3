"""Fused adaLN pieces: LayerNorm (no affine) + modulation `x * (1 + scale) + shift`, and the
gated residual `x + gate * y`, forward and backward.

x, y: (B, L, D); shift, scale, gate: (B, D) broadcast over L. Statistics and math in fp32 with a
single rounding at the store (the reference rounds after each op in low precision, so the fused
result is slightly *closer* to the fp32 reference). Output dtype follows torch's promotion of the
inputs, like the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hyv.kernels._common import (
    count_launch,
    lazy_kernels,
    max_programs,
    next_pow2,
    rows_per_program,
    use_triton,
)

__all__ = ["gated_residual", "gated_residual_reference", "layernorm_modulate", "layernorm_modulate_reference"]


def layernorm_modulate_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Same math as models/ops.layernorm_modulate."""
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + scale[:, None, :]) + shift[:, None, :]


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Same math as models/ops.gated_residual."""
    return x + gate[:, None, :] * y


@lazy_kernels
def _kernels() -> Any:
    from hyv.kernels import _modulate_kernels

    return _modulate_kernels


def _rows_3d(x: torch.Tensor) -> torch.Tensor:
    # (B, L, D) is read through its batch/row strides; only a non-unit last stride forces a copy
    return x if x.stride(-1) == 1 else x.contiguous()


def _vec(v: torch.Tensor) -> torch.Tensor:
    return v if v.stride(-1) == 1 else v.contiguous()  # (B, D) chunks of a modulation output: in place


def _tiling(x: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_D, ROWS, n_chunks for the backward's per-batch partial sums)."""
    B, L, D = x.shape
    BLOCK_D = next_pow2(D)
    ROWS = rows_per_program(BLOCK_D)
    n_chunks = max(1, min(-(-L // ROWS), max_programs(x.device) // max(B, 1)))
    return BLOCK_D, ROWS, n_chunks


class _LayerNormModulateFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
    ) -> torch.Tensor:
        x, shift, scale = _rows_3d(x), _vec(shift), _vec(scale)
        B, L, D = x.shape
        BLOCK_D, ROWS, n_chunks = _tiling(x)
        out = torch.empty(
            x.shape,
            dtype=torch.promote_types(x.dtype, torch.promote_types(shift.dtype, scale.dtype)),
            device=x.device,
        )
        mean = torch.empty(B * L, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        _kernels()._ln_mod_fwd[(B, -(-L // ROWS))](
            x, shift, scale, out, mean, rstd, L, D,
            x.stride(0), x.stride(1), shift.stride(0), scale.stride(0), eps,
            BLOCK_D=BLOCK_D, ROWS=ROWS,
        )  # fmt: skip
        count_launch("layernorm_modulate_fwd")
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.dtypes = (shift.dtype, scale.dtype)
        ctx.n_chunks = n_chunks
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, scale, mean, rstd = ctx.saved_tensors
        B, L, D = x.shape
        BLOCK_D, ROWS, n_chunks = _tiling(x)
        dy = dy.contiguous()  # no-op for the usual contiguous grad
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dshift_p = torch.empty(B, n_chunks, D, dtype=torch.float32, device=x.device)
        dscale_p = torch.empty_like(dshift_p)
        _kernels()._ln_mod_bwd[(B, n_chunks)](
            x, scale, dy, dx, mean, rstd, dshift_p, dscale_p, L, D, x.stride(0), x.stride(1), scale.stride(0),
            n_chunks, BLOCK_D=BLOCK_D, ROWS=ROWS,
        )  # fmt: skip
        count_launch("layernorm_modulate_bwd")
        shift_dtype, scale_dtype = ctx.dtypes
        return dx, dshift_p.sum(1).to(shift_dtype), dscale_p.sum(1).to(scale_dtype), None


class _GatedResidualFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, gate, y = _rows_3d(x), _vec(gate), _rows_3d(y)
        B, L, D = x.shape
        BLOCK_D, ROWS, _ = _tiling(x)
        out = torch.empty(
            x.shape,
            dtype=torch.promote_types(x.dtype, torch.promote_types(gate.dtype, y.dtype)),
            device=x.device,
        )
        _kernels()._gres_fwd[(B, -(-L // ROWS))](
            x, gate, y, out, L, D, x.stride(0), x.stride(1), y.stride(0), y.stride(1), gate.stride(0),
            BLOCK_D=BLOCK_D, ROWS=ROWS,
        )  # fmt: skip
        count_launch("gated_residual_fwd")
        ctx.save_for_backward(gate, y)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, y = ctx.saved_tensors
        B, L, D = y.shape
        BLOCK_D, ROWS, n_chunks = _tiling(y)
        dout = dout.contiguous()
        dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        dgate_p = torch.empty(B, n_chunks, D, dtype=torch.float32, device=y.device)
        _kernels()._gres_bwd[(B, n_chunks)](
            dout, gate, y, dy, dgate_p, L, D, y.stride(0), y.stride(1), gate.stride(0), n_chunks,
            BLOCK_D=BLOCK_D, ROWS=ROWS,
        )  # fmt: skip
        count_launch("gated_residual_bwd")
        # d/dx of x + g*y is the identity: hand dout straight back (cast only if dtypes differ)
        return dout.to(ctx.x_dtype), dgate_p.sum(1).to(gate.dtype), dy


def _shapes_ok(x: torch.Tensor, *vecs: torch.Tensor) -> bool:
    return x.ndim == 3 and x.numel() > 0 and all(v.shape == (x.shape[0], x.shape[2]) for v in vecs)


def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """LayerNorm (no affine) of x (B, L, D), then x * (1 + scale) + shift with (B, D) vectors."""
    if not (_shapes_ok(x, shift, scale) and use_triton(x, shift, scale)):
        return layernorm_modulate_reference(x, shift, scale, eps)
    out: torch.Tensor = _LayerNormModulateFn.apply(x, shift, scale, float(eps))
    return out


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate[:, None] * y for x, y (B, L, D) and gate (B, D)."""
    if not (_shapes_ok(x, gate) and y.shape == x.shape and use_triton(x, gate, y)):
        return gated_residual_reference(x, gate, y)
    out: torch.Tensor = _GatedResidualFn.apply(x, gate, y)
    return out
