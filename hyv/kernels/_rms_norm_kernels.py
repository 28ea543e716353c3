"""Triton kernels for hyv/kernels/rms_norm.py.

Kept in their own module, imported on the first launch: `triton.jit` reads TRITON_INTERPRET when
it decorates, and triton may be absent (then this module is never imported).
"""

# ruff: noqa: N803  (Triton convention: pointer arguments in capitals)
import triton
import triton.language as tl


@triton.jit
def _row_offsets(rows, S1, S2, st0, st1, st2):
    # row r -> (i0, i1, i2) over the leading dims, in int64 (B*L*H*D exceeds 2**31 at 120k tokens, B>1)
    r = rows.to(tl.int64)
    i2 = r % S2
    i1 = (r // S2) % S1
    i0 = r // (S1 * S2)
    return i0 * st0 + i1 * st1 + i2 * st2


@triton.jit
def _fwd_tile(X, W, Y, RSTD, tile, n_rows, S1, S2, st0, st1, st2, D, eps, BLOCK_D: tl.constexpr,
              ROWS: tl.constexpr):  # fmt: skip
    rows = tile * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    rmask = rows < n_rows
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    off = _row_offsets(rows, S1, S2, st0, st1, st2)
    x = tl.load(X + off[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)  # (ROWS, BLOCK_D)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # (ROWS,)
    # round to x's dtype before the weight, exactly like the reference
    n = (x * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = n * w[None, :]
    tl.store(Y + rows.to(tl.int64)[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _fwd_kernel(X1, W1, Y1, R1, n1, a1, b1, s01, s11, s21, tiles1,
                X2, W2, Y2, R2, n2, a2, b2, s02, s12, s22,
                D, eps, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    if pid < tiles1:
        _fwd_tile(X1, W1, Y1, R1, pid, n1, a1, b1, s01, s11, s21, D, eps, BLOCK_D, ROWS)
    else:
        _fwd_tile(X2, W2, Y2, R2, pid - tiles1, n2, a2, b2, s02, s12, s22, D, eps, BLOCK_D, ROWS)


@triton.jit
def _bwd_segment(X, W, DY, DX, RSTD, DWP, slot, prog, nprog, n_rows, S1, S2, st0, st1, st2, D,
                 BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    # Grid-stride over row tiles; this program's share of dW stays in registers (fp32)
    # and is written once, so dW costs nprog*D floats instead of an atomic per row.
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_tiles = tl.cdiv(n_rows, ROWS)
    for tile in range(prog, n_tiles, nprog):
        rows = tile * ROWS + tl.arange(0, ROWS)
        rmask = rows < n_rows
        m = rmask[:, None] & cmask[None, :]
        off = _row_offsets(rows, S1, S2, st0, st1, st2)
        dense = rows.to(tl.int64)[:, None] * D + cols[None, :]  # dy, dx are contiguous
        x = tl.load(X + off[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + dense, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        n = x * rstd[:, None]
        acc += tl.sum(dy * n.to(X.dtype.element_ty).to(tl.float32), axis=0)
        dn = dy * w[None, :]
        c = tl.sum(dn * n, axis=1) / D  # (ROWS,)
        dx = (dn - n * c[:, None]) * rstd[:, None]
        tl.store(DX + dense, dx.to(DX.dtype.element_ty), mask=m)
    tl.store(DWP + slot.to(tl.int64) * D + cols, acc, mask=cmask)


@triton.jit
def _bwd_kernel(X1, W1, DY1, DX1, R1, n1, a1, b1, s01, s11, s21, nprog1,
                X2, W2, DY2, DX2, R2, n2, a2, b2, s02, s12, s22, nprog2,
                DWP, D, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    if pid < nprog1:
        _bwd_segment(X1, W1, DY1, DX1, R1, DWP, pid, pid, nprog1, n1, a1, b1, s01, s11, s21, D, BLOCK_D, ROWS)
    else:
        lp = pid - nprog1
        _bwd_segment(X2, W2, DY2, DX2, R2, DWP, pid, lp, nprog2, n2, a2, b2, s02, s12, s22, D, BLOCK_D, ROWS)
