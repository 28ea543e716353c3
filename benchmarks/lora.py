"""What a LoRA adapter costs a job on the bundled model (CPU): reading and checking an adapter (a
cache miss), merging it into the weights and putting them back, and whole jobs without adapters,
with one and with two (cache warm), in one run; plus merging one 13B-sized layer. Writes
benchmarks/results/lora.json and its section of docs/benchmarks.md.

    python -m benchmarks.lora [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks.report import machine_description, update_benchmarks_doc

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/lora.json")
PROMPT = "a red circle moving right on a black background"
RANK = 16


def write_adapter(path: Path, shapes: dict[str, tuple[int, int]], seed: int) -> int:
    """A rank-RANK adapter on every Linear of the DiT; returns its parameter count."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, (rows, cols) in shapes.items():
        tensors[f"{module}.lora_A.weight"] = torch.randn(RANK, cols, generator=generator) / cols**0.5
        tensors[f"{module}.lora_B.weight"] = 0.1 * torch.randn(rows, RANK, generator=generator)
    save_file(tensors, str(path))
    return sum(t.numel() for t in tensors.values())


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(repeats: int) -> dict[str, Any]:
    from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
    from hyv.engine.lora import LoraLibrary, applied_loras
    from hyv.engine.lora_formats import LoraTargets, read_lora_file
    from hyv.engine.pipeline import PipelineOptions, VideoPipeline
    from hyv.engine.request import GenerationRequest, LoraChoice
    from hyv.models.dit import HunyuanVideoDiT
    from hyv.models.dit_config import dit_preset

    torch.set_num_threads(2)
    pipeline = VideoPipeline.from_dir(DEFAULT_BUNDLE_DIR, PipelineOptions(device="cpu", dtype=torch.float32))
    targets = LoraTargets.of(pipeline.dit)
    folder = Path(tempfile.mkdtemp(prefix="hyv-lora-bench-"))
    params = write_adapter(folder / "a.safetensors", targets.shapes, 1)
    write_adapter(folder / "b.safetensors", targets.shapes, 2)
    pipeline.loras = LoraLibrary(folder)

    load_s = timed(lambda: read_lora_file(folder / "a.safetensors", targets), repeats)
    adapter = pipeline.loras.load("a", pipeline.dit)

    def merge_and_restore() -> None:
        with applied_loras(pipeline.dit, [(adapter, 1.0)]):
            pass

    merge_s = timed(merge_and_restore, repeats)

    requests = {
        label: GenerationRequest(prompt=PROMPT, seed=0, loras=tuple(LoraChoice(name=n) for n in names))
        for label, names in (("none", ()), ("one", ("a",)), ("two", ("a", "b")))
    }
    pipeline.generate(requests["two"])  # warm: both adapters cached, first-call allocations done
    # Interleaved, so that load from elsewhere on the machine hits every variant alike; the minimum
    # is the least disturbed run.
    totals: dict[str, list[float]] = {label: [] for label in requests}
    denoise: dict[str, list[float]] = {label: [] for label in requests}
    for _ in range(repeats):
        for label, request in requests.items():
            start = time.perf_counter()
            result = pipeline.generate(request)
            totals[label].append(time.perf_counter() - start)
            denoise[label].append(result.timings["denoise"])
    jobs = {label: {"min": min(v), "median": statistics.median(v)} for label, v in totals.items()}
    denoise_s = {label: {"min": min(v), "median": statistics.median(v)} for label, v in denoise.items()}

    # One 13B layer (single_blocks.N.linear1, 21504 x 3072) merged on this CPU, fp32.
    with torch.device("meta"):
        big_targets = LoraTargets.of(HunyuanVideoDiT(dit_preset("hunyuan-video-13b")))
    layer = "single_blocks.0.linear1"
    rows, cols = big_targets.shapes[layer]
    weight = torch.randn(rows, cols)
    down, up = torch.randn(RANK, cols), torch.randn(rows, RANK)
    big_merge_s = timed(lambda: (weight + up @ down).to(torch.float32), repeats)

    return {
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "hyv-small (bundled), 64x64 x 17 frames, 4 steps",
        "rank": RANK,
        "adapted_layers": len(targets.shapes),
        "adapter_params": params,
        "dit_params": sum(p.numel() for p in pipeline.dit.parameters()),
        "repeats": repeats,
        "load_s": load_s,
        "merge_and_restore_s": merge_s,
        "job_s": jobs,
        "denoise_s": denoise_s,
        "layer_13b": {"layer": layer, "shape": [rows, cols], "merge_s": big_merge_s},
    }


def report(result: dict[str, Any]) -> str:
    jobs, denoise = result["job_s"], result["denoise_s"]
    layer = result["layer_13b"]
    names = {"none": "no adapters", "one": "one adapter (cached)", "two": "two adapters (cached)"}
    rows = "\n".join(
        f"| {names[k]} | {jobs[k]['min']:.3f} | {jobs[k]['median']:.3f} | {denoise[k]['min']:.3f} | "
        f"{jobs[k]['min'] / jobs['none']['min']:.2f}x |"
        for k in names
    )
    return f"""Machine: {result["machine"]}; torch {result["torch"]}, {result["threads"]} threads. \
{result["repeats"]} runs of each job, interleaved, in one process; another job was running on \
the same 2 cores, so the minimum is the figure to read.

Model: {result["model"]}; adapters of rank {result["rank"]} on all {result["adapted_layers"]} Linear \
layers of the DiT ({result["adapter_params"] / 1e6:.2f}M adapter parameters, DiT \
{result["dit_params"] / 1e6:.2f}M).

| job | whole job, min (s) | median (s) | denoise stage, min (s) | min vs. no adapters |
|---|---:|---:|---:|---:|
{rows}

| step | seconds (median) |
|---|---:|
| read + check one adapter (a cache miss) | {result["load_s"]:.4f} |
| merge one adapter into the weights and put them back | {result["merge_and_restore_s"]:.4f} |

One 13B-sized layer ({layer["layer"]}, {layer["shape"][0]} x {layer["shape"][1]}, fp32 on this CPU): \
W + B @ A takes {layer["merge_s"]:.3f} s; the 13B has 343 Linear layers, and on a GPU the merge runs \
there (not measured here: no GPU)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.repeats)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    update_benchmarks_doc("LoRA adapters (benchmarks/lora.py)", report(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
