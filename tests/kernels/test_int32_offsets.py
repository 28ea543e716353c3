"""int32 overflow in the kernels' index arithmetic, at the 13B's 720p sizes.

Analysis: the meta-device trace of the 13B DiT at 720x1280x129 records every launch with its real
arguments (hyv.kernels.aot.record_launches); `offset_extents` gives the largest element offset each
pointer argument reaches. Offsets past 2**31 - 1 need int64 arithmetic in the kernel.

Behaviour: the kernels run in Triton's interpreter on views whose offsets pass 2**31 (a small
shape with huge strides into one bf16 buffer of 2**31 + 2**20 elements: 4.3 GB of address space,
of which only the pages the views touch are ever mapped). The interpreter computes addresses with
the kernel's own integer widths, so int32 arithmetic there wraps and reads the wrong memory (or
crashes the process: hence the subprocess) instead of the right values.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyv.engine.meta_trace import build_meta_dit, trace_step
from hyv.kernels.aot import INT32_MAX, OffsetExtent, TensorArg, offset_extents

ROOT = Path(__file__).resolve().parents[2]

# The (kernel, pointer argument) pairs the interpreter check below drives past 2**31.
CHECKED_PAST_INT32 = {
    ("rms_norm.fwd_kernel", "X1"),
    ("rms_norm.fwd_kernel", "X2"),
    ("rms_norm.bwd_kernel", "X1"),
    ("rms_norm.bwd_kernel", "X2"),
    ("rope.rope_kernel", "Q"),
    ("rope.rope_kernel", "K"),
    ("modulate.ln_mod_fwd", "X"),
    ("modulate.ln_mod_bwd", "X"),
    ("modulate.gres_fwd", "X"),
    ("modulate.gres_fwd", "Y"),
    ("modulate.gres_bwd", "Y"),
}


@pytest.fixture(scope="module")
def extents_720p() -> dict[int, list[OffsetExtent]]:
    """Batch 1 (the guidance-distilled T2V model) and 2 (true CFG: both branches in one forward)."""
    model = build_meta_dit()
    return {b: offset_extents(trace_step(720, 1280, 129, batch=b, model=model).launches) for b in (1, 2)}


def test_offsets_at_720p(extents_720p: dict[int, list[OffsetExtent]]) -> None:
    by_arg = {b: {(e.kernel, e.arg): e.max_offset for e in ext} for b, ext in extents_720p.items()}
    tokens = 33 * 45 * 80 + 256
    # q/k are read in place from the fused qkv projection (B, L, 3 * 3072): the last q row of the
    # last sample sits (B - 1) * L * 9216 + (L - 1) * 9216 + 23 * 128 + 127 elements in.
    for b in (1, 2):
        assert by_arg[b][("rms_norm.fwd_kernel", "X1")] == (b * tokens - 1) * 9216 + 23 * 128 + 127
        # dense (B, L, 3072) activations: 3.7e8 elements per sample
        assert by_arg[b][("modulate.ln_mod_fwd", "X")] == b * tokens * 3072 - 1
        assert by_arg[b][("rope.rope_kernel", "Q")] == b * tokens * 3072 - 1
    assert not [e for e in extents_720p[1] if e.exceeds_int32]
    past = {(e.kernel, e.arg) for e in extents_720p[2] if e.exceeds_int32}
    assert past == {("rms_norm.fwd_kernel", "X1"), ("rms_norm.fwd_kernel", "X2")}
    # every pointer the model drives past int32 is one the interpreter check proves int64-safe
    assert past <= CHECKED_PAST_INT32


def test_every_launched_kernel_was_seen(extents_720p: dict[int, list[OffsetExtent]]) -> None:
    kernels = {e.kernel for e in extents_720p[1]}
    # the inference forward launches the forward kernels (backward ones: test_aot_compile's registry)
    assert kernels == {"rms_norm.fwd_kernel", "rope.rope_kernel", "modulate.ln_mod_fwd", "modulate.gres_fwd"}


@pytest.mark.slow
def test_kernels_address_past_int32() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.test_int32_offsets"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    if "SKIP" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, f"exit {proc.returncode} (a negative code is a crash):\n{out[-4000:]}"
    checked = {tuple(line.split()[1:3]) for line in proc.stdout.splitlines() if line.startswith("past ")}
    assert checked == CHECKED_PAST_INT32, out


# ---------------------------------------------------------------------------------------------
# The interpreter check, run as `python -m tests.kernels.test_int32_offsets` under TRITON_INTERPRET=1


def _check() -> None:
    from hyv import kernels
    from hyv.kernels import rope
    from tests.kernels.conftest import TOL

    assert os.environ.get("TRITON_INTERPRET") == "1"
    dtype = torch.bfloat16
    try:
        buf = torch.empty(2**31 + 2**20, dtype=dtype)  # address space only: pages map when touched
    except RuntimeError as exc:
        print(f"SKIP: cannot reserve 4.3 GB of address space ({exc})")
        return
    gen = torch.Generator().manual_seed(0)
    big = 2**30 + 2**18  # fits int32; twice it does not
    # Two layouts, so that each product the kernels form (batch index x batch stride, token index
    # x token stride) passes 2**31 on its own: (B, L, batch stride, token stride, base offset).
    layouts = {"batch": (3, 2, big, 2**12, 0), "token": (1, 3, 3 * big, big, 2**11)}

    def close(name: str, actual: torch.Tensor | None, expected: torch.Tensor | None) -> None:
        assert actual is not None and expected is not None, name
        err = (actual.double() - expected.double()).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        assert err <= TOL[dtype] * scale, f"{name}: max err {err:.3g}"

    def leaf(v: torch.Tensor) -> torch.Tensor:
        return v.detach().float().requires_grad_(True)

    kernels.set_fused_enabled(True)
    before = dict(kernels.LAUNCHES)

    def strided(layout: tuple[int, int, int, int, int], inner: tuple[int, ...], offset: int) -> torch.Tensor:
        """(B, L, *inner) at the layout's strides (inner dims contiguous), random values."""
        B, L, sb, sl, base = layout
        inner_strides = [1] * len(inner)
        for i in range(len(inner) - 2, -1, -1):
            inner_strides[i] = inner_strides[i + 1] * inner[i + 1]
        v = buf.as_strided((B, L, *inner), (sb, sl, *inner_strides), base + offset)
        with torch.no_grad():
            v.copy_(torch.randn(v.shape, generator=gen).to(dtype))
        assert TensorArg.of(v).max_offset > INT32_MAX
        return v.requires_grad_(True)

    for layout, shape in layouts.items():
        B, L = shape[:2]
        q, k = strided(shape, (2, 16), 0), strided(shape, (2, 16), 32)  # (B, L, H, D)
        x, y = strided(shape, (64,), 64), strided(shape, (64,), 128)  # (B, L, D)

        # rms_norm_qk forward and backward (the backward re-reads q, k through their strides)
        wq, wk = (torch.randn(16, generator=gen).to(dtype).requires_grad_() for _ in range(2))
        yq, yk = kernels.rms_norm_qk(q, k, wq, wk, 1e-6)
        dyq, dyk = torch.randn_like(yq), torch.randn_like(yk)
        torch.autograd.backward([yq, yk], [dyq, dyk])
        rq, rk, rwq, rwk = leaf(q), leaf(k), leaf(wq), leaf(wk)
        eq, ek = kernels.rms_norm_qk_reference(rq, rk, rwq, rwk, 1e-6)
        torch.autograd.backward([eq, ek], [dyq.float(), dyk.float()])
        checks: list[tuple[str, torch.Tensor | None, torch.Tensor | None]]
        checks = [("yq", yq, eq), ("yk", yk, ek), ("dq", q.grad, rq.grad), ("dk", k.grad, rk.grad)]
        for name, a, e in checks:
            close(f"{layout}: rms_norm_qk {name}", a, e)

        # rope on the strided q, k: forward, and the backward rotation (by -sin: same tables)
        angles = torch.randn(L, 8, generator=gen)
        cos, sin = angles.cos().repeat_interleave(2, 1), angles.sin().repeat_interleave(2, 1)  # (L, D)
        for backward in (False, True):
            oq, ok = rope._launch(q.detach(), k.detach(), cos, sin, backward=backward)
            s = -sin if backward else sin
            close(f"{layout}: rope q", oq, kernels.apply_rotary_emb_reference(q.detach().float(), cos, s))
            close(f"{layout}: rope k", ok, kernels.apply_rotary_emb_reference(k.detach().float(), cos, s))

        # layernorm_modulate and gated_residual, forward and backward
        mod = torch.randn(B, 3 * 64, generator=gen).to(dtype).requires_grad_()
        shift, scale, gate = mod.chunk(3, dim=-1)
        outs = [kernels.layernorm_modulate(x, shift, scale, 1e-6), kernels.gated_residual(x, gate, y)]
        douts = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, douts)
        rx, ry, rmod = leaf(x), leaf(y), leaf(mod)
        rshift, rscale, rgate = rmod.chunk(3, dim=-1)
        refs = [
            kernels.layernorm_modulate_reference(rx, rshift, rscale, 1e-6),
            kernels.gated_residual_reference(rx, rgate, ry),
        ]
        torch.autograd.backward(refs, [d.float() for d in douts])
        checks = [("ln_mod out", outs[0], refs[0]), ("gres out", outs[1], refs[1])]
        checks += [("dx", x.grad, rx.grad), ("dy", y.grad, ry.grad), ("dmod", mod.grad, rmod.grad)]
        for name, a, e in checks:
            close(f"{layout}: modulate {name}", a, e)

    launched = {n for n, c in kernels.LAUNCHES.items() if c > before.get(n, 0)}
    expected = {"rms_norm_qk_fwd", "rms_norm_qk_bwd", "rope_qk_fwd", "rope_qk_bwd"}
    expected |= {
        "layernorm_modulate_fwd",
        "layernorm_modulate_bwd",
        "gated_residual_fwd",
        "gated_residual_bwd",
    }
    assert launched == expected, f"the Triton path did not run for {sorted(expected - launched)}"
    for kernel, arg in sorted(CHECKED_PAST_INT32):
        print("past", kernel, arg)


if __name__ == "__main__":
    _check()
