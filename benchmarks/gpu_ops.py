"""The op-level parts of benchmarks/gpu.py: the kernel test suite as a subprocess, the fused
kernels against their PyTorch reference and torch.compile(reference) in GB/s, and attention
TFLOP/s per installed backend.

The ops and their minimum byte counts are those of benchmarks/kernels.py (`CASES`), measured here
at one size: the joint sequence of a 720x1280x129 video (118,800 video + 256 text tokens).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.kernels import CASES, HEAD_DIM, HEADS, HIDDEN, fwd_bwd
from hyv import kernels
from hyv.kernels._common import interpret_mode

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name substring, most specific first.
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median time of one call in ms: CUDA events on a GPU (no host overhead between kernels),
    the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------
# Kernel tests

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
_PROGRESS = re.compile(r"[.FsExX]+(\s+\[\s*\d+%\])?")
_PROGRESS_KEYS = {"passed": ".X", "failed": "F", "skipped": "sx", "errors": "E"}


def run_kernel_tests(pytest_args: list[str], timeout_s: float, interpret: bool) -> dict[str, Any]:
    """`pytest -q <pytest_args>` in a subprocess with the fused kernels on; TRITON_INTERPRET=1 only
    when `interpret` (the CPU smoke), so on a GPU the kernels are compiled for the card.
    Returns the counts of pytest's summary line, the exit code and the wall time."""
    env = {**os.environ, "HYV_FUSED_KERNELS": "1"}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    logger.info("kernel tests: %s (timeout %.0f s)", " ".join(cmd[1:]), timeout_s)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout_s)
        )
    except subprocess.TimeoutExpired as exc:
        # keep what finished: pytest -q prints one character per test (. F s E x X)
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        progress = "".join(line for line in partial.splitlines() if _PROGRESS.fullmatch(line.strip()))
        return {
            "command": cmd[1:],
            "error": f"timed out after {timeout_s:.0f} s; counts are of the tests finished by then",
            "seconds": time.perf_counter() - start,
            **{key: sum(progress.count(c) for c in chars) for key, chars in _PROGRESS_KEYS.items()},
        }
    output = proc.stdout + proc.stderr
    summary = next((line for line in reversed(output.splitlines()) if _COUNT.search(line)), "")
    counts = {"errors" if name.startswith("error") else name: int(n) for n, name in _COUNT.findall(summary)}
    result: dict[str, Any] = {
        "command": cmd[1:],
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - start,
        "summary": summary.strip(" ="),
        **{key: counts.get(key, 0) for key in ("passed", "failed", "skipped", "errors")},
    }
    if proc.returncode != 0:
        result["output_tail"] = output[-3000:]
    return result


# ---------------------------------------------------------------------------------------------
# Fused kernels


def fused_runs_on(device: torch.device) -> bool:
    """Whether kernels.* dispatch to Triton for tensors on `device` (see hyv.kernels._common)."""
    if not (kernels.fused_enabled() and kernels.triton_available()):
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpret_mode())


def bench_fused_ops(
    tokens: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    with_compile: bool,
    peak_gbps: float | None,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Each op of benchmarks.kernels.CASES at `tokens` tokens: fused (when Triton runs on this
    device), the eager reference and torch.compile(reference); forward and forward+backward."""
    variants: dict[str, Callable[[Callable[..., Any], Callable[..., Any]], Callable[..., Any]]] = {}
    if fused_runs_on(device):
        variants["fused"] = lambda fused, ref: fused
    variants["reference"] = lambda fused, ref: ref
    if with_compile:
        variants["compile"] = lambda fused, ref: torch.compile(ref, dynamic=False)
    size = torch.finfo(dtype).bits // 8
    rows = []
    for name, (fused, ref, make, (streams_fwd, streams_bwd)) in CASES.items():
        args = make(tokens, dtype, device)
        moved = tokens * HIDDEN * size  # bytes of one tensor-sized stream
        for variant, pick in variants.items():
            row: dict[str, Any] = {"op": name, "tokens": tokens, "variant": variant, "dtype": str(dtype)}
            if deadline is not None and time.monotonic() >= deadline:
                row["skipped"] = "time budget spent"
                rows.append(row)
                continue
            try:
                fn = pick(fused, ref)
                with torch.no_grad():
                    row["fwd_ms"] = time_ms(functools.partial(fn, *args), device, repeats)
                row["fwdbwd_ms"] = time_ms(fwd_bwd(fn, args), device, repeats)
                row["fwd_gbps"] = streams_fwd * moved / row["fwd_ms"] / 1e6
                row["fwdbwd_gbps"] = (streams_fwd + streams_bwd) * moved / row["fwdbwd_ms"] / 1e6
                if peak_gbps:
                    row["fwd_pct_peak"] = 100 * row["fwd_gbps"] / peak_gbps
                    row["fwdbwd_pct_peak"] = 100 * row["fwdbwd_gbps"] / peak_gbps
            except Exception as exc:  # torch.compile without a toolchain, OOM, ...
                row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:160]}"
            logger.info("kernels %s", row)
            rows.append(row)
        del args
    return rows


# ---------------------------------------------------------------------------------------------
# Attention


def attention_flops(tokens: int, heads: int, head_dim: int) -> float:
    """QK^T and PV over `tokens` real tokens: 2 matmuls x 2 FLOPs per multiply-add."""
    return 4.0 * heads * head_dim * tokens * tokens


def bench_attention(
    video_tokens: int,
    text_tokens: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    peak: float | None,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
) -> list[dict[str, Any]]:
    """Forward attention over the joint sequence (every token real, the key mask passed as the DiT
    passes it) with each installed backend forced in turn."""
    tokens = video_tokens + text_tokens
    q, k, v = torch.randn(3, 1, tokens, heads, head_dim, device=device, dtype=dtype)  # (B, L, H, D) each
    mask = torch.ones(1, tokens, dtype=torch.bool, device=device)
    flops = attention_flops(tokens, heads, head_dim)
    rows = []
    for backend in kernels.available_backends():
        row: dict[str, Any] = {
            "backend": backend,
            "video_tokens": video_tokens,
            "text_tokens": text_tokens,
            "heads": heads,
            "head_dim": head_dim,
            "dtype": str(dtype),
        }
        try:
            with torch.no_grad():
                call = functools.partial(kernels.attention, q, k, v, mask, backend=backend)
                row["fwd_ms"] = time_ms(call, device, repeats, warmup=1)
            row["tflops"] = flops / row["fwd_ms"] / 1e9
            if peak:
                row["pct_peak"] = 100 * row["tflops"] / peak
        except Exception as exc:  # a backend that cannot run on this card, OOM, ...
            row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:160]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        logger.info("attention %s", row)
        rows.append(row)
    return rows
