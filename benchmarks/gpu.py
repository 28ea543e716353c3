"""One command for a machine with a GPU (about 10 minutes on one H100):

    python -m benchmarks.gpu                        # everything; writes docs/benchmarks.md's GPU section
    python -m benchmarks.gpu --quick                # 544x960x129 only, one measured step
    python -m benchmarks.gpu --only dit,fp8         # some stages (JSON only, unless --doc)
    python -m benchmarks.gpu --smoke                # CPU, tiny sizes, ~30 s; JSON to a temp file
    python -m benchmarks.gpu --from-json FILE       # re-render the docs section from a saved run

Stages, each timed, each skippable, each given a share of the time budget (unused time carries
over to the next stage):
  tests      pytest tests/kernels in a subprocess, fused kernels on, on CUDA (not the interpreter)
  kernels    fused rms_norm / rope / modulate vs the PyTorch reference and torch.compile: GB/s, % of peak
  attention  TFLOP/s of every installed backend (FA3, FA2, xformers, SDPA) at 118,800 + 256 tokens
  dit        the 13B architecture, random bf16 weights: ours vs diffusers' HunyuanVideoTransformer3DModel,
             s/step and peak memory at 544x960x129 and 720x1280x129
  sp         ours over 2/4/8 GPUs through torchrun (when there are that many), speedup vs 1 GPU
  fp8        hyv.models.fp8.quantize_dit_ vs bf16 step time

Without CUDA the run is the smoke: the same code on the CPU at tiny sizes (tiny DiT preset, a few
hundred tokens, SDPA, Triton only under TRITON_INTERPRET=1, no torch.compile), which CI runs so the
script cannot rot; it never touches docs/benchmarks.md unless given --doc.
Writes benchmarks/results/gpu.json after every stage, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu_dit, gpu_ops
from benchmarks.gpu_dit import VideoSize, parse_size
from benchmarks.gpu_report import SECTION, card_info, ours_step_s, render, targets
from benchmarks.kernels import HIDDEN, peak_bandwidth
from benchmarks.report import update_benchmarks_doc
from hyv import kernels
from hyv.kernels.attention import select_backend
from hyv.models.dit_config import dit_preset

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results/gpu.json")
DOC = Path("docs/benchmarks.md")
STAGES = ("tests", "kernels", "attention", "dit", "sp", "fp8")
# Share of the time budget per stage; the DiT comparison is the headline and gets the most.
SHARES = {"tests": 0.20, "kernels": 0.10, "attention": 0.05, "dit": 0.45, "sp": 0.10, "fp8": 0.10}
# Default budgets; every torchrun job of the sp stage (2, 4, 8 GPUs) adds its own start-up and steps.
BUDGET_S = {"full": 600.0, "quick": 300.0, "smoke": 300.0}
SP_JOB_S = 90.0
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class Plan:
    """Sizes and repeats of one run (full / quick on a GPU, smoke on the CPU)."""

    mode: str
    device: torch.device
    dtype: torch.dtype
    preset: str
    sizes: list[VideoSize]
    text_tokens: int
    warmup: int
    repeats: int
    kernel_tests: list[str]
    interpret: bool
    op_tokens: int
    op_repeats: int
    with_compile: bool
    attn_video_tokens: int
    attn_text_tokens: int
    sp_world_sizes: list[int]
    sp_size: VideoSize
    fp8_size: VideoSize
    budget_s: float
    stages: list[str] = field(default_factory=lambda: list(STAGES))


def make_plan(mode: str, budget_s: float | None) -> Plan:
    if mode == "smoke":
        small, wide = VideoSize(128, 128, 9), VideoSize(128, 192, 9)  # 192 and 288 video tokens
        return Plan(
            mode=mode,
            device=torch.device("cpu"),
            dtype=torch.float32,  # CPU bf16 is emulated: slow and not what a GPU runs anyway
            preset="tiny",
            sizes=[small, wide],
            text_tokens=32,
            warmup=1,
            repeats=2,
            kernel_tests=[
                "tests/kernels/test_rms_norm.py",
                "-k",
                "test_rms_norm_fwd_bwd and 130 and float32",
            ],
            interpret=True,
            op_tokens=256,
            op_repeats=3,
            with_compile=False,  # inductor's first CPU compile alone takes ~25 s
            attn_video_tokens=256,
            attn_text_tokens=32,
            sp_world_sizes=[2],  # gloo on the CPU
            sp_size=small,
            fp8_size=small,
            budget_s=budget_s or BUDGET_S[mode],
        )
    p544, p720 = parse_size("544x960x129"), parse_size("720x1280x129")
    quick = mode == "quick"
    sp_world_sizes = [n for n in (2, 4, 8) if n <= torch.cuda.device_count()]
    return Plan(
        mode=mode,
        device=torch.device("cuda", torch.cuda.current_device()),
        dtype=torch.bfloat16,
        preset="hunyuan-video-13b",
        sizes=[p544] if quick else [p544, p720],
        text_tokens=256,
        warmup=1,
        repeats=1 if quick else 2,
        kernel_tests=["tests/kernels"],
        interpret=False,
        op_tokens=p720.video_tokens(dit_preset("hunyuan-video-13b")) + 256,
        op_repeats=20,
        with_compile=True,
        attn_video_tokens=p720.video_tokens(dit_preset("hunyuan-video-13b")),
        attn_text_tokens=256,
        sp_world_sizes=sp_world_sizes,
        sp_size=p544 if quick else p720,
        fp8_size=p544,
        budget_s=budget_s or BUDGET_S[mode] + SP_JOB_S * len(sp_world_sizes),
    )


class Budget:
    """Deadlines (time.monotonic) per stage: stage i must end by start + budget x (the shares of
    stages 1..i), so time a stage leaves unused goes to the ones after it."""

    def __init__(self, total_s: float, stages: list[str]) -> None:
        self.start = time.monotonic()
        self.total_s = total_s
        weights = sum(SHARES[s] for s in stages) or 1.0
        self.deadlines, cumulative = {}, 0.0
        for stage in stages:
            cumulative += SHARES[stage]
            self.deadlines[stage] = self.start + total_s * cumulative / weights

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# ---------------------------------------------------------------------------------------------
# Stages: each returns its JSON section; {"status": "skipped", "reason": ...} when it cannot run.


def stage_tests(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    run = gpu_ops.run_kernel_tests(plan.kernel_tests, deadline - time.monotonic(), plan.interpret)
    return {"interpret": plan.interpret, **run, **({"status": "error"} if "error" in run else {})}


def stage_kernels(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    kernels.set_fused_enabled(True)
    rows = gpu_ops.bench_fused_ops(
        plan.op_tokens,
        plan.dtype,
        plan.device,
        plan.op_repeats,
        plan.with_compile,
        result["peak_gbps"],
        deadline,
    )
    return {"tokens": plan.op_tokens, "hidden": HIDDEN, "dtype": str(plan.dtype), "rows": rows}


def stage_attention(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    rows = gpu_ops.bench_attention(
        plan.attn_video_tokens,
        plan.attn_text_tokens,
        plan.dtype,
        plan.device,
        max(3, plan.op_repeats // 4),
        result["peak_tflops"],
    )
    return {
        "video_tokens": plan.attn_video_tokens,
        "text_tokens": plan.attn_text_tokens,
        "heads": gpu_ops.HEADS,
        "head_dim": gpu_ops.HEAD_DIM,
        "dtype": str(plan.dtype),
        "rows": rows,
    }


def stage_dit(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    kernels.set_fused_enabled(True)
    config = dit_preset(plan.preset)
    runs = [
        gpu_dit.bench_model(
            kind, config, size, plan.text_tokens, plan.device, plan.dtype, plan.warmup, plan.repeats, deadline
        )
        for size in plan.sizes  # both models at a size before the next size: a full pair first
        for kind in ("ours", "diffusers")
    ]
    params = {r["model"]: r["params"] for r in runs if "params" in r}
    probe = torch.empty(1, 1, config.num_heads, config.head_dim, device=plan.device, dtype=plan.dtype)
    return {
        "attention_backend": select_backend(probe),  # what our blocks called (forced or automatic)
        "text_tokens": plan.text_tokens,
        "warmup": plan.warmup,
        "repeats": plan.repeats,
        "params": params,
        "runs": runs,
    }


def stage_sp(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    if not plan.sp_world_sizes:
        return {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU(s); SP needs 2 or more"}
    size = plan.sp_size.label
    base = ours_step_s(result, size)  # SP 1 from the dit stage of this run, else measured here
    world_sizes = plan.sp_world_sizes if base is not None else [1, *plan.sp_world_sizes]
    runs = []
    for world in world_sizes:
        row = run_sp(plan, world, deadline)
        if world == 1 and "step_s" in row:
            base = row["step_s"]
        if base is not None and "step_s" in row:
            row["speedup"] = base / row["step_s"]
        runs.append(row)
    return {"size": size, "baseline_s": base, "runs": runs}


def run_sp(plan: Plan, world: int, deadline: float) -> dict[str, Any]:
    """One torchrun job of `world` ranks running `--sp-worker`; rank 0's JSON row."""
    left = deadline - time.monotonic()
    if left <= 0:
        return {"world_size": world, "size": plan.sp_size.label, "skipped": "time budget spent"}
    with tempfile.TemporaryDirectory(prefix="hyv-gpu-sp-") as tmp:
        out = Path(tmp) / "sp.json"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
            "-m", "benchmarks.gpu", "--sp-worker", "--preset", plan.preset, "--size", plan.sp_size.label,
            "--text-tokens", str(plan.text_tokens), "--warmup", str(plan.warmup),
            "--repeats", str(plan.repeats), "--dtype", str(plan.dtype).removeprefix("torch."),
            "--results", str(out),
        ]  # fmt: skip
        logger.info("sp %d: %s", world, " ".join(cmd[1:]))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, left))
        except subprocess.TimeoutExpired:
            return {"world_size": world, "size": plan.sp_size.label, "error": f"timed out after {left:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stdout + proc.stderr)[-2000:]
            logger.warning("sp %d failed (exit %d):\n%s", world, proc.returncode, tail)
            return {
                "world_size": world,
                "size": plan.sp_size.label,
                "error": f"exit {proc.returncode}: {tail[-200:]}",
            }
        row: dict[str, Any] = json.loads(out.read_text())
    logger.info("sp %s", {k: v for k, v in row.items() if k != "steps_s"})
    return row


def stage_fp8(plan: Plan, result: dict[str, Any], deadline: float) -> dict[str, Any]:
    config = dit_preset(plan.preset)
    out = gpu_dit.bench_fp8(
        config, plan.fp8_size, plan.text_tokens, plan.device, plan.dtype, plan.warmup, plan.repeats, deadline
    )
    if "skipped" in out:
        return {"status": "skipped", "reason": out["skipped"]}
    return out


STAGE_FNS: dict[str, Callable[[Plan, dict[str, Any], float], dict[str, Any]]] = {
    "tests": stage_tests,
    "kernels": stage_kernels,
    "attention": stage_attention,
    "dit": stage_dit,
    "sp": stage_sp,
    "fp8": stage_fp8,
}


# ---------------------------------------------------------------------------------------------


def write_results(result: dict[str, Any], path: Path) -> None:
    result["targets"] = targets(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def run(plan: Plan, results_path: Path) -> dict[str, Any]:
    """Every stage of `plan` in order, within its budget; the JSON is rewritten after each."""
    machine = card_info(plan.device)
    name = machine["device_name"]
    result: dict[str, Any] = {
        "schema": 1,
        "mode": plan.mode,
        "preset": plan.preset,
        "dtype": str(plan.dtype).removeprefix("torch."),
        "budget_s": plan.budget_s,
        "machine": machine,
        "peak_gbps": peak_bandwidth(name) if plan.device.type == "cuda" else None,
        "peak_tflops": gpu_ops.peak_tflops(name) if plan.device.type == "cuda" else None,
        "stages": {},
        "wall_s": 0.0,
    }
    budgeted = [s for s in plan.stages if s != "sp" or plan.sp_world_sizes]
    budget = Budget(plan.budget_s, budgeted)
    logger.info(
        "benchmarks.gpu (%s) on %s; stages %s; budget %.0f s", plan.mode, name, plan.stages, plan.budget_s
    )
    for stage in STAGES:
        if stage not in plan.stages:
            result["stages"][stage] = {"status": "skipped", "reason": "not selected (--only)"}
            continue
        deadline = budget.deadlines.get(stage, time.monotonic())
        logger.info("stage %s: start at %.0f s, %.0f s until its deadline", stage, budget.elapsed(),
                    deadline - time.monotonic())  # fmt: skip
        start = time.perf_counter()
        if time.monotonic() >= deadline and stage in budget.deadlines:
            section: dict[str, Any] = {"status": "skipped", "reason": "time budget spent"}
        else:
            try:
                section = {"status": "ok", **STAGE_FNS[stage](plan, result, deadline)}
            except Exception as exc:  # one broken stage must not lose the others' numbers
                logger.error("stage %s failed:\n%s", stage, traceback.format_exc())
                section = {"status": "error", "error": gpu_dit.error_text(exc)}
        section["seconds"] = time.perf_counter() - start
        result["stages"][stage] = section
        result["wall_s"] = budget.elapsed()
        logger.info("stage %s: %s in %.1f s", stage, section["status"], section["seconds"])
        write_results(result, results_path)
    return result


def sp_worker_main(args: argparse.Namespace) -> None:
    gpu_dit.sp_worker(
        args.preset,
        parse_size(args.size),
        args.text_tokens,
        args.warmup,
        args.repeats,
        Path(args.results),
        DTYPES[args.dtype],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (automatic without CUDA)")
    parser.add_argument("--quick", action="store_true", help="544x960x129 only, one measured step")
    parser.add_argument("--only", default="", help=f"comma-separated stages of {','.join(STAGES)}")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget (600 s full, 300 s quick, +90 s per SP job)"
    )
    parser.add_argument("--results", default=None, help=f"JSON path (default {RESULTS}; smoke: a temp file)")
    parser.add_argument(
        "--doc", default=None, help=f"markdown file to update (default {DOC} for full GPU runs)"
    )
    parser.add_argument("--no-doc", action="store_true", help="never touch the markdown")
    parser.add_argument("--from-json", default=None, help="only render the docs section from this JSON")
    # One rank of the sp stage, started by torchrun (not for direct use).
    parser.add_argument("--sp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="hunyuan-video-13b", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="720x1280x129", help=argparse.SUPPRESS)
    parser.add_argument("--text-tokens", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted({s.strip() for s in args.only.split(",") if s.strip()} - set(STAGES))
    if unknown:
        parser.error(f"--only: unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.sp_worker:
        sp_worker_main(args)
        return None
    if args.from_json:
        result: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        doc = Path(args.doc) if args.doc else DOC
        update_benchmarks_doc(SECTION, render(result), doc)
        logger.info("rendered %s into %s", args.from_json, doc)
        return result

    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and not args.smoke:
        logger.warning("no CUDA device: running the CPU smoke instead (not GPU numbers; docs untouched)")
    plan = make_plan("smoke" if smoke else "quick" if args.quick else "full", args.budget_s)
    if args.only:
        plan.stages = [s for s in STAGES if s in {x.strip() for x in args.only.split(",")}]
    if args.results:
        results_path = Path(args.results)
    elif smoke:
        results_path = Path(tempfile.mkdtemp(prefix="hyv-gpu-smoke-")) / "gpu.json"
    else:
        results_path = RESULTS
    result = run(plan, results_path)
    logger.info("wrote %s (%.0f s)", results_path, result["wall_s"])
    markdown = render(result)
    print(markdown)  # CLI output
    # Only a complete GPU run replaces the committed section by default; anything else needs --doc.
    full_gpu_run = plan.mode == "full" and not args.only
    if not args.no_doc and (args.doc or full_gpu_run):
        doc = Path(args.doc) if args.doc else DOC
        update_benchmarks_doc(SECTION, markdown, doc)
        logger.info("updated %s (section %r)", doc, SECTION)
    return result


if __name__ == "__main__":
    main()
