"""Triton kernel for hyv/kernels/rope.py (imported on the first launch; see _rms_norm_kernels.py)."""

# ruff: noqa: N803  (Triton convention: pointer arguments in capitals)
import triton
import triton.language as tl


@triton.jit
def _rope_tile(X, Y, pid, b, pos, sb, sl, sh, H, D, ce, co, se, so, pmask, BACKWARD: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    # x[b, pos] is an (H, D) tile read as D/2 interleaved pairs (a, b) = (x[..., 2p], x[..., 2p+1])
    heads = tl.arange(0, BLOCK_H)
    pairs = tl.arange(0, BLOCK_P)
    m = (heads[:, None] < H) & pmask[None, :]
    src = (
        X
        + b.to(tl.int64) * sb
        + pos.to(tl.int64) * sl
        + heads[:, None].to(tl.int64) * sh
        + 2 * pairs[None, :]
    )
    xa = tl.load(src, mask=m, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_P)
    xb = tl.load(src + 1, mask=m, other=0.0).to(tl.float32)
    if BACKWARD:
        # transpose of the rotation: dx_a = dy_a*cos_a + dy_b*sin_b; dx_b = dy_b*cos_b - dy_a*sin_a
        ya = xa * ce[None, :] + xb * so[None, :]
        yb = xb * co[None, :] - xa * se[None, :]
    else:
        ya = xa * ce[None, :] - xb * se[None, :]
        yb = xb * co[None, :] + xa * so[None, :]
    # the output is contiguous (B, L, H, D); program pid is row b*L + pos
    dst = Y + (pid.to(tl.int64) * H + heads[:, None]) * D + 2 * pairs[None, :]
    tl.store(dst, ya.to(Y.dtype.element_ty), mask=m)
    tl.store(dst + 1, yb.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(Q, QO, qsb, qsl, qsh, Hq, K, KO, ksb, ksl, ksh, Hk, COS, SIN, L, Lr, D,
                 HAS_K: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_P: tl.constexpr):  # fmt: skip
    # one program per (b, pos): cos/sin for position pos are read once and shared by all q and k heads
    pid = tl.program_id(0)
    b = pid // L
    pos = pid % L
    pairs = tl.arange(0, BLOCK_P)
    pmask = pairs < D // 2
    # positions past the table (text tokens after the video prefix) get cos=1, sin=0: a copy
    tmask = pmask & ((pairs * 0 + pos) < Lr)  # broadcast the scalar test to a (BLOCK_P,) mask
    trow = COS + pos.to(tl.int64) * D + 2 * pairs
    srow = SIN + pos.to(tl.int64) * D + 2 * pairs
    ce = tl.load(trow, mask=tmask, other=1.0).to(tl.float32)
    co = tl.load(trow + 1, mask=tmask, other=1.0).to(tl.float32)
    se = tl.load(srow, mask=tmask, other=0.0).to(tl.float32)
    so = tl.load(srow + 1, mask=tmask, other=0.0).to(tl.float32)
    _rope_tile(Q, QO, pid, b, pos, qsb, qsl, qsh, Hq, D, ce, co, se, so, pmask, BACKWARD, BLOCK_H, BLOCK_P)
    if HAS_K:
        _rope_tile(
            K, KO, pid, b, pos, ksb, ksl, ksh, Hk, D, ce, co, se, so, pmask, BACKWARD, BLOCK_H, BLOCK_P
        )
