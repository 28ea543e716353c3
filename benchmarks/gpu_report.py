"""The reporting side of benchmarks/gpu.py: what card and software ran it, the performance targets
the results are judged against, and the markdown of docs/benchmarks.md's GPU section."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import shlex
import subprocess
from typing import Any

import torch

from benchmarks.gpu_dit import dit_flops, parse_size
from benchmarks.report import machine_description
from hyv.models.dit_config import dit_preset

SECTION = "GPU (benchmarks/gpu.py)"
PACKAGES = ("torch", "triton", "flash-attn", "flash_attn_3", "xformers", "diffusers")

# Issue 21's targets, for the 13B model on H100s.
TARGET_PRESET, TARGET_SIZE = "hunyuan-video-13b", "720x1280x129"
TARGET_STEP_S, OFFICIAL_STEP_S = 20.0, 38.1
TARGET_SP, TARGET_SP_SPEEDUP, XDIT_SP_SPEEDUP = 8, 7.0, 5.64
H100_DENSE_TFLOPS = 989.0


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def card_info(device: torch.device) -> dict[str, Any]:
    """The device that ran the numbers (named in the docs), the host, and the software versions."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    info: dict[str, Any] = {"host": machine_description(), "device": device.type, "versions": versions}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            driver=_driver_version(),
            cuda=torch.version.cuda,
        )
    else:
        info.update(device_name="cpu", gpu_count=0)
    return info


def ours_step_s(result: dict[str, Any], size: str) -> float | None:
    """Our model's measured step time at `size` in the dit stage of `result`, if any."""
    runs = result["stages"].get("dit", {}).get("runs", [])
    steps = (r["step_s"] for r in runs if r["model"] == "ours" and r["size"] == size and "step_s" in r)
    return next(steps, None)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what this run measured for it (None when the run did not measure it, e.g.
    another preset in the smoke, or fewer than 8 GPUs). `ratio` is measured / target."""
    config = dit_preset(TARGET_PRESET)
    flops = dit_flops(config, parse_size(TARGET_SIZE).video_tokens(config), 256)
    floor_s = flops / (H100_DENSE_TFLOPS * 1e12)
    step = speedup = None
    if result["preset"] == TARGET_PRESET:
        step = ours_step_s(result, TARGET_SIZE)
        sp_runs = result["stages"].get("sp", {}).get("runs", [])
        speedups = (
            r.get("speedup")
            for r in sp_runs
            if r.get("world_size") == TARGET_SP and r.get("size") == TARGET_SIZE
        )
        speedup = next(speedups, None)
    return [
        {
            "name": f"DiT step at {TARGET_SIZE}, SP 1, one H100",
            "target": f"<= {TARGET_STEP_S:g} s",
            "context": f"official code {OFFICIAL_STEP_S} s; FLOP floor at "
            f"{H100_DENSE_TFLOPS:g} TFLOP/s: {floor_s:.1f} s",
            "measured": step,
            "unit": "s",
            "ratio": None if step is None else step / TARGET_STEP_S,
            "met": None if step is None else step <= TARGET_STEP_S,
        },
        {
            "name": f"SP {TARGET_SP} speedup at {TARGET_SIZE}",
            "target": f">= {TARGET_SP_SPEEDUP:g}x",
            "context": f"xDiT {XDIT_SP_SPEEDUP}x",
            "measured": speedup,
            "unit": "x",
            "ratio": None if speedup is None else speedup / TARGET_SP_SPEEDUP,
            "met": None if speedup is None else speedup >= TARGET_SP_SPEEDUP,
        },
    ]


# ---------------------------------------------------------------------------------------------
# Markdown


def _num(value: float | None, spec: str, unit: str = "") -> str:
    """`spec` "sig" keeps 3 significant digits without an exponent (smoke numbers are tiny)."""
    if value is None:
        return "n/a"
    if spec == "sig":
        digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
        return f"{value:.{digits}f}{unit}"
    return f"{format(value, spec)}{unit}"


def _status(stage: dict[str, Any]) -> str | None:
    """A one-line reason when the stage produced no table."""
    if stage.get("status") == "skipped":
        return f"skipped: {stage.get('reason', '')}"
    if stage.get("status") == "error":
        return f"failed: {stage.get('error', '')}"
    return None


def _row_note(row: dict[str, Any]) -> str:
    if "error" in row:
        return f" ({row['error'][:100]})"
    if "skipped" in row:
        return f" ({row['skipped']})"
    return ""


def card_line(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    if machine["device"] != "cuda":
        return (
            f"Device: **{machine['device_name']}** (no GPU). Host: {machine['host']}. Software: {versions}."
        )
    return (
        f"Card: **{machine['device_name']}** x{machine['gpu_count']} ({machine['gpu_memory_gib']:.1f} GiB, "
        f"sm{machine['capability'].replace('.', '')}), driver {machine['driver'] or 'unknown'}, "
        f"CUDA {machine['cuda']}. Host: {machine['host']}. Software: {versions}."
    )


def _targets_md(result: dict[str, Any]) -> list[str]:
    lines = ["**Targets** (ratio = measured / target)", "", "| target | measured | ratio |", "|---|---:|---|"]
    for t in result["targets"]:
        if t["measured"] is None:
            measured, ratio = "not measured in this run", ""
        else:
            measured = f"{t['measured']:.2f} {t['unit']}"
            ratio = f"{t['ratio']:.2f} ({'met' if t['met'] else 'not met'})"
        lines.append(f"| {t['name']}: {t['target']} ({t['context']}) | {measured} | {ratio} |")
    return lines


def _tests_md(stage: dict[str, Any]) -> list[str]:
    head = "**Kernel tests**"
    if "command" not in stage:  # skipped, or the stage itself raised
        return [f"{head}: {_status(stage)}"]
    where = "on CUDA" if not stage.get("interpret") else "through the Triton interpreter on the CPU"
    command = shlex.join(["pytest", *stage["command"][2:]])
    counts = ", ".join(f"{stage[key]} {key}" for key in ("passed", "failed", "errors", "skipped"))
    note = f" ({stage['error']})" if "error" in stage else ""
    return [f"{head} {where} (`{command}`, fused kernels on): {counts} in {stage['seconds']:.0f} s{note}."]


def _kernels_md(stage: dict[str, Any], peak: float | None) -> list[str]:
    head = "**Fused kernels** vs the PyTorch reference and torch.compile(reference)"
    if reason := _status(stage):
        return [f"{head}: {reason}"]
    peak_txt = f"{peak:.0f} GB/s" if peak else "unknown for this device"
    lines = [
        f"{head}, {stage['tokens']:,} tokens x {stage['hidden']} ({stage['dtype']}); GB/s = minimum bytes "
        f"moved / time (median; CUDA events on a GPU); card peak {peak_txt}.",
        "",
        "| op | variant | fwd ms | fwd GB/s | % peak | fwd+bwd ms | fwd+bwd GB/s | % peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in stage["rows"]:
        lines.append(
            f"| {r['op']} | {r['variant']}{_row_note(r)} | {_num(r.get('fwd_ms'), 'sig')} "
            f"| {_num(r.get('fwd_gbps'), 'sig')} | {_num(r.get('fwd_pct_peak'), '.0f', '%')} "
            f"| {_num(r.get('fwdbwd_ms'), 'sig')} | {_num(r.get('fwdbwd_gbps'), 'sig')} "
            f"| {_num(r.get('fwdbwd_pct_peak'), '.0f', '%')} |"
        )
    return lines


def _attention_md(stage: dict[str, Any], peak: float | None) -> list[str]:
    head = "**Attention** forward per installed backend"
    if reason := _status(stage):
        return [f"{head}: {reason}"]
    lines = [
        f"{head}, {stage['video_tokens']:,} video + {stage['text_tokens']} text tokens, "
        f"{stage['heads']} heads x {stage['head_dim']} ({stage['dtype']}); "
        f"card peak {_num(peak, '.0f', ' TFLOP/s')} (dense bf16).",
        "",
        "| backend | fwd ms | TFLOP/s | % peak |",
        "|---|---:|---:|---:|",
    ]
    for r in stage["rows"]:
        lines.append(
            f"| {r['backend']}{_row_note(r)} | {_num(r.get('fwd_ms'), 'sig')} "
            f"| {_num(r.get('tflops'), 'sig')} | {_num(r.get('pct_peak'), '.0f', '%')} |"
        )
    return lines


def _dit_md(stage: dict[str, Any], result: dict[str, Any]) -> list[str]:
    head = "**DiT step**: ours vs diffusers' `HunyuanVideoTransformer3DModel`"
    if reason := _status(stage):
        return [f"{head}: {reason}"]
    params = stage["params"]
    lines = [
        f"{head} (as shipped: its default attention; ours: {stage['attention_backend']}), "
        f"preset `{result['preset']}` "
        f"(ours {_num(params.get('ours'), ',')} / diffusers {_num(params.get('diffusers'), ',')} "
        "parameters), "
        f"random {result['dtype']} weights, batch 1, {stage['text_tokens']} text tokens, one forward = one "
        f"step; warm-up {stage['warmup']}, median of up to {stage['repeats']}. Peak = all device memory "
        "allocated during the steps, weights included.",
        "",
        "| size (HxWxF) | latent | video tokens | ours s/step | diffusers s/step | diffusers / ours "
        "| ours peak GiB | diffusers peak GiB | ours TFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_size: dict[str, dict[str, dict[str, Any]]] = {}
    for r in stage["runs"]:
        by_size.setdefault(r["size"], {})[r["model"]] = r
    for size, pair in by_size.items():
        ours, ref = pair.get("ours", {}), pair.get("diffusers", {})
        any_row = ours or ref
        ratio = ref["step_s"] / ours["step_s"] if "step_s" in ours and "step_s" in ref else None
        latent = "x".join(map(str, any_row.get("latent", [])))
        lines.append(
            f"| {size} | {latent} | {any_row.get('video_tokens', 0):,} "
            f"| {_num(ours.get('step_s'), 'sig')}{_row_note(ours)} "
            f"| {_num(ref.get('step_s'), 'sig')}{_row_note(ref)} "
            f"| {_num(ratio, '.2f', 'x')} | {_num(ours.get('peak_mem_gib'), '.1f')} "
            f"| {_num(ref.get('peak_mem_gib'), '.1f')} | {_num(ours.get('tflops'), 'sig')} |"
        )
    return lines


def _sp_md(stage: dict[str, Any]) -> list[str]:
    head = "**Sequence parallel** (ours, `torchrun`, USP: Ulysses x ring)"
    if reason := _status(stage):
        return [f"{head}: {reason}"]
    lines = [
        f"{head} at {stage['size']}; speedup vs SP 1 of this run.",
        "",
        "| GPUs | ulysses x ring | s/step | speedup | efficiency |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in stage["runs"]:
        layout = f"{r['ulysses_degree']} x {r['ring_degree']}" if "ulysses_degree" in r else ""
        eff = 100 * r["speedup"] / r["world_size"] if r.get("speedup") else None
        lines.append(
            f"| {r['world_size']} | {layout} | {_num(r.get('step_s'), 'sig')}{_row_note(r)} "
            f"| {_num(r.get('speedup'), '.2f', 'x')} | {_num(eff, '.0f', '%')} |"
        )
    return lines


def _fp8_md(stage: dict[str, Any], result: dict[str, Any]) -> list[str]:
    head = f"**FP8 vs {result['dtype']}** (ours, `hyv.models.fp8.quantize_dit_`)"
    if reason := _status(stage):
        return [f"{head}: {reason}"]
    if "skipped" in stage or "error" in stage:
        return [f"{head}: {stage.get('skipped') or stage.get('error')}"]
    base, fp8 = stage["baseline"], stage["fp8"]
    return [
        f"{head} at {stage['size']}, FP8 matmuls by {stage['path']}: "
        f"{result['dtype']} {_num(base.get('step_s'), 'sig', ' s')}{_row_note(base)}, "
        f"FP8 {_num(fp8.get('step_s'), 'sig', ' s')}{_row_note(fp8)} "
        f"({stage.get('linears_quantized', 0)} linears quantized); "
        f"speedup {_num(stage.get('speedup'), '.2f', 'x')}; "
        f"peak {_num(base.get('peak_mem_gib'), '.1f')} -> {_num(fp8.get('peak_mem_gib'), '.1f')} GiB."
    ]


def render(result: dict[str, Any]) -> str:
    """docs/benchmarks.md's GPU section for one run (its JSON)."""
    machine, stages = result["machine"], result["stages"]
    lines = [card_line(machine)]
    if result["mode"] == "smoke":
        lines += [
            "",
            "**Smoke run on the CPU at tiny sizes**: it checks the code paths; these are not GPU numbers.",
        ]
    lines += [
        "",
        f"`python -m benchmarks.gpu` ({result['mode']}): {result['wall_s']:.0f} s "
        f"of a {result['budget_s']:.0f} s budget"
        + ("." if result["mode"] == "smoke" else "; JSON in `benchmarks/results/gpu.json`."),
        "",
        *_targets_md(result),
    ]
    peak_gbps, peak_tf = result.get("peak_gbps"), result.get("peak_tflops")
    parts = [
        _tests_md(stages.get("tests", {"status": "skipped", "reason": "not run"})),
        _kernels_md(stages.get("kernels", {"status": "skipped", "reason": "not run"}), peak_gbps),
        _attention_md(stages.get("attention", {"status": "skipped", "reason": "not run"}), peak_tf),
        _dit_md(stages.get("dit", {"status": "skipped", "reason": "not run"}), result),
        _sp_md(stages.get("sp", {"status": "skipped", "reason": "not run"})),
        _fp8_md(stages.get("fp8", {"status": "skipped", "reason": "not run"}), result),
    ]
    for part in parts:
        lines += ["", *part]
    return "\n".join(lines)
