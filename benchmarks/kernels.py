"""Fused kernels vs the PyTorch reference (eager) vs torch.compile(reference), forward and
forward+backward, at the 13B DiT's shapes (hidden 3072, 24 heads x 128, 8k-120k tokens), plus
attention throughput per installed backend. Writes benchmarks/results/kernels.json and the
"Fused kernels" section of docs/benchmarks.md.

    python -m benchmarks.kernels            # on a GPU: full shapes, bf16
    python -m benchmarks.kernels --quick    # small shapes; on CPU only reference vs torch.compile

GB/s counts the bytes each op must move at minimum (inputs read once, outputs written once), so
it compares directly with the card's peak bandwidth.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import machine_description, update_benchmarks_doc
from hyv import kernels

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/kernels.json")
SECTION = "Fused kernels (benchmarks/kernels.py)"
HIDDEN, HEADS, HEAD_DIM = 3072, 24, 128
PEAK_GBPS = {  # HBM peak by device-name substring, first match wins (most specific first)
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,  # SXM
    "H200": 4800.0,
    "GH200": 4000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,  # 40 GB
    "L40S": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
}

Case = tuple[
    Callable[..., Any], Callable[..., Any], Callable[[int, torch.dtype, torch.device], list[Any]], str
]


def peak_bandwidth(name: str) -> float | None:
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def _ln_inputs(n: int, dt: torch.dtype, dev: torch.device) -> list[Any]:
    return [
        torch.randn(1, n, HIDDEN, device=dev, dtype=dt),
        *torch.randn(2, 1, HIDDEN, device=dev, dtype=dt),
        1e-6,
    ]


def _gres_inputs(n: int, dt: torch.dtype, dev: torch.device) -> list[Any]:
    x, y = torch.randn(2, 1, n, HIDDEN, device=dev, dtype=dt)
    return [x, torch.randn(1, HIDDEN, device=dev, dtype=dt), y]


def _qk_inputs(n: int, dt: torch.dtype, dev: torch.device) -> list[Any]:
    q, k = torch.randn(2, 1, n, HEADS, HEAD_DIM, device=dev, dtype=dt)
    return [q, k]


def _rms_inputs(n: int, dt: torch.dtype, dev: torch.device) -> list[Any]:
    w = torch.ones(HEAD_DIM, device=dev, dtype=dt)
    return [*_qk_inputs(n, dt, dev), w, w.clone(), 1e-6]


def _rope_inputs(n: int, dt: torch.dtype, dev: torch.device) -> list[Any]:
    ang = torch.randn(n, HEAD_DIM // 2, device=dev)
    return [*_qk_inputs(n, dt, dev), ang.cos().repeat_interleave(2, 1), ang.sin().repeat_interleave(2, 1)]


# name -> (fused, reference, inputs, the tensor-sized streams "fwd reads+writes / bwd reads+writes")
CASES: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., list[Any]], tuple[int, int]]] = {
    # layernorm_modulate: fwd x -> y (2 streams); bwd x, dy -> dx (3)
    "layernorm_modulate": (
        kernels.layernorm_modulate,
        kernels.layernorm_modulate_reference,
        _ln_inputs,
        (2, 3),
    ),
    # gated_residual: fwd x, y -> out (3); bwd dout, y -> dy (3; dx is dout itself)
    "gated_residual": (kernels.gated_residual, kernels.gated_residual_reference, _gres_inputs, (3, 3)),
    # q and k each (n, 24, 128) = n*3072 elements: fwd 2 reads + 2 writes; bwd 2 x + 2 dy + 2 dx
    "rms_norm_qk": (kernels.rms_norm_qk, kernels.rms_norm_qk_reference, _rms_inputs, (4, 6)),
    "rope_qk": (kernels.apply_rotary_emb_qk, kernels.apply_rotary_emb_qk_reference, _rope_inputs, (4, 4)),
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_ms(fn: Callable[[], Any], dev: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(dev)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def fwd_bwd(fn: Callable[..., Any], args: list[Any]) -> Callable[[], Any]:
    leaves = [
        a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    ]

    def run() -> None:
        out = fn(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(list(outs), [torch.ones_like(o) for o in outs])

    return run


def bench_ops(tokens: list[int], dtype: torch.dtype, dev: torch.device, repeats: int) -> list[dict[str, Any]]:
    rows = []
    variants: dict[str, Callable[[Callable[..., Any], Callable[..., Any]], Callable[..., Any] | None]] = {
        "reference": lambda fused, ref: ref,
        "compile": lambda fused, ref: torch.compile(ref, dynamic=False),
    }
    if dev.type == "cuda" and kernels.triton_available():
        variants = {"fused": lambda fused, ref: fused, **variants}
    for name, (fused, ref, make, (streams_f, streams_b)) in CASES.items():
        for n in tokens:
            args = make(n, dtype, dev)
            elems = n * HIDDEN
            size = torch.finfo(dtype).bits // 8
            for variant, pick in variants.items():
                fn = pick(fused, ref)
                assert fn is not None
                row: dict[str, Any] = {"op": name, "tokens": n, "variant": variant, "dtype": str(dtype)}
                try:
                    with torch.no_grad():
                        row["fwd_ms"] = time_ms(functools.partial(fn, *args), dev, repeats)
                    row["fwdbwd_ms"] = time_ms(fwd_bwd(fn, args), dev, repeats)
                    row["fwd_gbps"] = streams_f * elems * size / row["fwd_ms"] / 1e6
                    row["fwdbwd_gbps"] = (streams_f + streams_b) * elems * size / row["fwdbwd_ms"] / 1e6
                except Exception as exc:  # torch.compile without a toolchain, OOM at 120k, ...
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                logger.info("%s", row)
                rows.append(row)
    return rows


def bench_attention(
    tokens: list[int], dtype: torch.dtype, dev: torch.device, repeats: int
) -> list[dict[str, Any]]:
    rows = []
    for n in tokens:
        q, k, v = torch.randn(3, 1, n, HEADS, HEAD_DIM, device=dev, dtype=dtype)
        valid = n - 128  # a padded text tail, as in the DiT's joint sequence
        mask = torch.arange(n, device=dev)[None, :] < valid
        flops = 4 * HEADS * HEAD_DIM * valid * valid  # QK^T and PV over the valid tokens only
        for backend in kernels.available_backends():
            row: dict[str, Any] = {"backend": backend, "tokens": n, "dtype": str(dtype)}
            try:
                with torch.no_grad():
                    call = functools.partial(kernels.attention, q, k, v, mask, backend=backend)
                    ms = time_ms(call, dev, repeats, 1)
                row.update(fwd_ms=ms, tflops=flops / ms / 1e9)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            logger.info("%s", row)
            rows.append(row)
    return rows


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "n/a"


def render(result: dict[str, Any]) -> str:
    peak = result["peak_gbps"]
    lines = [f"Machine: {result['machine']}. dtype {result['dtype']}, {result['mode']}."]
    if result["device"] != "cuda":
        lines.append(
            "\n**GPU figures pending**: no GPU on this machine, so the fused Triton kernels were not timed "
            "(they need CUDA); below is the CPU reference vs torch.compile at small shapes only. "
            "Run `python -m benchmarks.kernels` on the GPU to fill in fused numbers."
        )
    peak_txt = f"{peak:.0f} GB/s" if peak else "unknown for this device"
    lines += [
        "",
        f"GB/s = minimum bytes moved / time; peak bandwidth {peak_txt}.",
        "",
        "| op | tokens | variant | fwd ms | fwd GB/s | fwd+bwd ms | fwd+bwd GB/s | % of peak (fwd) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["ops"]:
        pct = f"{100 * r['fwd_gbps'] / peak:.0f}%" if peak and "fwd_gbps" in r else "-"
        variant = r["variant"] + (f" ({r['error']})" if "error" in r else "")
        lines.append(
            f"| {r['op']} | {r['tokens']} | {variant} | {_fmt(r, 'fwd_ms', '.3f')} "
            f"| {_fmt(r, 'fwd_gbps', '.1f')} | {_fmt(r, 'fwdbwd_ms', '.3f')} "
            f"| {_fmt(r, 'fwdbwd_gbps', '.1f')} | {pct} |"
        )
    lines += ["", "Attention (forward, 128 padded text tokens masked/packed out):", ""]
    lines += ["| backend | tokens | fwd ms | TFLOP/s |", "|---|---:|---:|---:|"]
    for r in result["attention"]:
        name = r["backend"] + (f" ({r['error']})" if "error" in r else "")
        lines.append(f"| {name} | {r['tokens']} | {_fmt(r, 'fwd_ms', '.2f')} | {_fmt(r, 'tflops', '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (CPU smoke run)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32  # CPU bf16 is emulated and not representative
    if gpu:
        op_tokens = [8192, 32768] if args.quick else [8192, 32768, 119040]
        attn_tokens = [32768] if args.quick else [32768, 119040]
        repeats = 10
    else:
        op_tokens = [1024, 4096] if args.quick else [8192]
        attn_tokens = [1024] if args.quick else [4096]
        repeats = 3 if args.quick else 5
    kernels.set_fused_enabled(True)
    result: dict[str, Any] = {
        "machine": machine_description(),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if gpu else "cpu",
        "peak_gbps": peak_bandwidth(torch.cuda.get_device_name(dev)) if gpu else None,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": "quick" if args.quick else "full",
        "ops": bench_ops(op_tokens, dtype, dev, repeats),
        "attention": bench_attention(attn_tokens, dtype, dev, repeats),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    print(table)  # CLI output
    if not args.no_doc:
        update_benchmarks_doc(SECTION, table)
    return result


if __name__ == "__main__":
    main()
