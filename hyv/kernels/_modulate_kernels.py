"""Triton kernels for hyv/kernels/modulate.py (imported on the first launch; see _rms_norm_kernels.py).

Layout: x, y, dout are (B, L, D) read through (batch, row) strides with a unit last stride; the
per-batch vectors shift/scale/gate (B, D) through a batch stride (they are usually chunks of one
(B, k*D) modulation output). Programs are (batch, chunk of rows): the batch's vectors are loaded
once per program, and the backward accumulates their gradients per program in fp32.
"""

# ruff: noqa: N803  (Triton convention: pointer arguments in capitals)
import triton
import triton.language as tl


@triton.jit
def _ln_mod_fwd(X, SHIFT, SCALE, Y, MEAN, RSTD, L, D, sxb, sxl, sshb, sscb, eps,
                BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    b = tl.program_id(0)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # rows inside batch b
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < L
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    xo = b.to(tl.int64) * sxb + rows.to(tl.int64)[:, None] * sxl + cols[None, :]
    x = tl.load(X + xo, mask=m, other=0.0).to(tl.float32)  # (ROWS, BLOCK_D)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(m, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / D + eps)  # biased variance, as F.layer_norm
    shift = tl.load(SHIFT + b.to(tl.int64) * sshb + cols, mask=cmask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b.to(tl.int64) * sscb + cols, mask=cmask, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    dense = b.to(tl.int64) * L + rows.to(tl.int64)  # (ROWS,) row index into the contiguous outputs
    tl.store(Y + dense[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + dense, mean, mask=rmask)
    tl.store(RSTD + dense, rstd, mask=rmask)


@triton.jit
def _ln_mod_bwd(X, SCALE, DY, DX, MEAN, RSTD, DSHIFT_P, DSCALE_P, L, D, sxb, sxl, sscb, n_chunks,
                BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    # program (b, c) walks row tiles c, c + n_chunks, ... of batch b (dy, dx are contiguous)
    b = tl.program_id(0)
    c = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    scale = tl.load(SCALE + b.to(tl.int64) * sscb + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile in range(c, tl.cdiv(L, ROWS), n_chunks):
        rows = tile * ROWS + tl.arange(0, ROWS)
        rmask = rows < L
        m = rmask[:, None] & cmask[None, :]
        xo = b.to(tl.int64) * sxb + rows.to(tl.int64)[:, None] * sxl + cols[None, :]
        dense = b.to(tl.int64) * L + rows.to(tl.int64)
        do = dense[:, None] * D + cols[None, :]
        x = tl.load(X + xo, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + do, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + dense, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + dense, mask=rmask, other=0.0)
        n = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        acc_shift += tl.sum(dy, axis=0)
        acc_scale += tl.sum(dy * n, axis=0)
        dn = dy * (1.0 + scale[None, :])
        c1 = tl.sum(dn, axis=1) / D
        c2 = tl.sum(dn * n, axis=1) / D
        dx = (dn - c1[:, None] - n * c2[:, None]) * rstd[:, None]
        tl.store(DX + do, dx.to(DX.dtype.element_ty), mask=m)
    p = (b.to(tl.int64) * n_chunks + c) * D + cols
    tl.store(DSHIFT_P + p, acc_shift, mask=cmask)
    tl.store(DSCALE_P + p, acc_scale, mask=cmask)


@triton.jit
def _gres_fwd(X, GATE, Y, OUT, L, D, sxb, sxl, syb, syl, sgb, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    b = tl.program_id(0)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    m = (rows < L)[:, None] & cmask[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + b.to(tl.int64) * sxb + r64 * sxl + cols[None, :], mask=m, other=0.0).to(tl.float32)
    y = tl.load(Y + b.to(tl.int64) * syb + r64 * syl + cols[None, :], mask=m, other=0.0).to(tl.float32)
    g = tl.load(GATE + b.to(tl.int64) * sgb + cols, mask=cmask, other=0.0).to(tl.float32)
    out = x + g[None, :] * y
    tl.store(OUT + (b.to(tl.int64) * L + r64) * D + cols[None, :], out.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _gres_bwd(DO, GATE, Y, DY, DGATE_P, L, D, syb, syl, sgb, n_chunks,
              BLOCK_D: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    # dx = dout (no kernel needed); here dy = gate * dout and dgate = sum_l dout * y
    b = tl.program_id(0)
    c = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    g = tl.load(GATE + b.to(tl.int64) * sgb + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile in range(c, tl.cdiv(L, ROWS), n_chunks):
        rows = tile * ROWS + tl.arange(0, ROWS)
        m = (rows < L)[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)[:, None]
        do = (b.to(tl.int64) * L + r64) * D + cols[None, :]
        dout = tl.load(DO + do, mask=m, other=0.0).to(tl.float32)
        y = tl.load(Y + b.to(tl.int64) * syb + r64 * syl + cols[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(dout * y, axis=0)
        tl.store(DY + do, (dout * g[None, :]).to(DY.dtype.element_ty), mask=m)
    tl.store(DGATE_P + (b.to(tl.int64) * n_chunks + c) * D + cols, acc, mask=cmask)
