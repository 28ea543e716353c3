"""Every Triton kernel compiled ahead of time for sm_80 and sm_90 by Triton's own compiler, with the
argument types its launcher passes for fp32 / bf16 / fp16 (no GPU, no driver: the wheel's ptxas).

The compile runs in a subprocess (`python -m hyv.kernels.aot --json`) without TRITON_INTERPRET:
this session imports triton for the interpreter, and then triton's own library cannot be compiled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hyv.kernels import aot
from hyv.kernels._common import triton_available

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("rms_norm", "rope", "modulate")

pytestmark = [
    pytest.mark.slow,  # about 35 s on 2 cores with a cold triton cache (60 compiles)
    pytest.mark.skipif(not triton_available(), reason="triton is not installed"),
]


@pytest.fixture(scope="module")
def compiled() -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "hyv.kernels.aot", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    print("\n" + aot.format_table(aot.CompiledInfo(**row) for row in rows))
    return rows


def launched_kernels() -> set[str]:
    """The kernels the launchers launch: `module:function` of every `_*_kernels` function that a
    launcher module names (the others are device functions those kernels call)."""
    names = set()
    for launcher in LAUNCHERS:
        source = (ROOT / "hyv" / "kernels" / f"{launcher}.py").read_text()
        kernel_module = f"hyv.kernels._{launcher}_kernels"
        kernel_source = (ROOT / "hyv" / "kernels" / f"_{launcher}_kernels.py").read_text()
        for fn in re.findall(r"^def (_\w+)\(", kernel_source, re.MULTILINE):
            if re.search(rf"\b{fn}\b", source):
                names.add(f"{kernel_module}:{fn}")
    return names


def test_every_kernel_compiles_for_every_arch_and_dtype(compiled: list[dict[str, Any]]) -> None:
    kernels = launched_kernels()
    assert len(kernels) == 7, sorted(
        kernels
    )  # rms fwd/bwd, rope, layernorm-modulate and gated-residual fwd/bwd
    done = {(row["source"], row["arch"], row["dtype"]) for row in compiled}
    missing = {(k, a, d) for k in kernels for a in aot.ARCHS for d in aot.DTYPES} - done
    assert not missing, sorted(missing)
    # rope's constexpr variants (q+k or one tensor, forward or backward rotation) are 4 binaries
    rope_variants = {
        (row["constexprs"]["HAS_K"], row["constexprs"]["BACKWARD"])
        for row in compiled
        if row["kernel"] == "rope.rope_kernel"
    }
    assert rope_variants == {(True, False), (True, True), (False, False), (False, True)}


def test_binaries_and_resources(compiled: list[dict[str, Any]]) -> None:
    for row in compiled:
        what = f"{row['kernel']} {row['dtype']} sm_{row['arch']}"
        assert row["ptx_target"].startswith(f"sm_{row['arch']}"), what
        assert row["ptx_bytes"] > 1000 and row["cubin_bytes"] > 1000, what
        assert 16 <= row["registers"] <= 255, what
        # no kernel spills registers to local memory at the 13B's sizes (ln_mod_bwd is the closest,
        # near 250 registers for a 4096-wide row in 4 warps)
        assert row["spill_bytes"] == 0, what
        assert row["shared_bytes"] <= 48 * 1024, what  # no opt-in to large shared memory needed
        # the pointers of the activations carry the dtype the launch was recorded with
        pointers = {t for t in row["signature"].values() if t.startswith("*")}
        assert f"*{row['dtype']}" in pointers, (what, pointers)


def test_launch_arguments_are_the_launchers(compiled: list[dict[str, Any]]) -> None:
    # the strides and sizes of the 13B's tensors at 720p fit int32 arguments, so every
    # non-constexpr integer is i32 and the kernels widen to int64 themselves (test_int32_offsets)
    for row in compiled:
        ints = {t for t in row["signature"].values() if t[0] in "iu"}
        assert ints <= {"i32"}, (row["kernel"], ints)
    by_kernel = {row["kernel"]: row["constexprs"] for row in compiled}
    assert by_kernel["rms_norm.fwd_kernel"] == {"BLOCK_D": 128, "ROWS": 32}  # head dim 128
    assert by_kernel["modulate.ln_mod_fwd"] == {"BLOCK_D": 4096, "ROWS": 1}  # hidden 3072
