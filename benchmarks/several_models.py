"""Two models in one worker process (issue 25): the bundled 4-step student and its 50-step teacher
loaded side by side, as `hyv serve --models hyv-small,hyv-small-teacher` holds them: the resident
memory each adds, and one video each at the student's default size (64x64, 17 frames), stage by
stage. Writes benchmarks/results/several_models.json and its section of docs/benchmarks.md.

    python -m benchmarks.several_models [--runs N]

The teacher is weights/hyv-small-teacher when the checkout has it; otherwise a stand-in exported
from the student's own DiT by the same code (`hyv train export-teacher`), which has the teacher's
shape and cost (the same DiT, 50 steps of true CFG) but not its weights: the timings and memory hold,
the videos do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import machine_description, update_benchmarks_doc

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/several_models.json")
PROMPT = "a red circle moving right on a black background"
STAGES = ("text_encode", "denoise", "decode", "encode")


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def teacher_dir(work: Path) -> tuple[Path, bool]:
    """The teacher bundle, and whether it is the real one (else a stand-in from the student)."""
    from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, bundled_model_dir

    found = bundled_model_dir("hyv-small-teacher")
    if found is not None:
        return found, True
    out = work / "hyv-small-teacher"
    # In a child process: this one's resident memory must not hold the export's tensors.
    bundle = str(DEFAULT_BUNDLE_DIR)
    command = ["train", "export-teacher", "--teacher", bundle, "--student", bundle, "--out", str(out)]
    subprocess.run([sys.executable, "-m", "hyv", *command], check=True)
    return out, False


def run(runs: int, note: str = "") -> dict[str, Any]:
    from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
    from hyv.engine.pipeline import PipelineOptions, VideoPipeline
    from hyv.engine.request import GenerationRequest

    with tempfile.TemporaryDirectory() as tmp:
        teacher, real = teacher_dir(Path(tmp))
        memory = {"before_mb": resident_mb()}
        pipelines = {"hyv-small": VideoPipeline.from_dir(DEFAULT_BUNDLE_DIR, PipelineOptions())}
        memory["student_mb"] = resident_mb()
        pipelines["hyv-small-teacher"] = VideoPipeline.from_dir(teacher, PipelineOptions())
        memory["both_mb"] = resident_mb()
        models: dict[str, Any] = {}
        for name, pipeline in pipelines.items():
            request = GenerationRequest(prompt=PROMPT, seed=0)
            summaries = [pipeline.generate(request).summary() for _ in range(runs)]
            timings: list[dict[str, float]] = [x["seconds"] for x in summaries]  # type: ignore[misc]
            seconds = {s: statistics.median(t[s] for t in timings) for s in STAGES}
            first = summaries[0]
            models[name] = {
                "steps": first["steps"],
                "true_cfg": pipeline._true_cfg(),
                "size": f"{first['width']}x{first['height']}",
                "num_frames": first["num_frames"],
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "total_s": round(sum(seconds.values()), 3),
            }
    return {
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "note": note,
        "teacher": "weights/hyv-small-teacher" if real else "a stand-in exported from the student's DiT",
        "memory": {k: round(v, 1) for k, v in memory.items()},
        "models": models,
    }


def report(result: dict[str, Any]) -> str:
    memory, models = result["memory"], result["models"]
    lines = [
        f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} threads. One process "
        f"holding both models, one video each ({PROMPT!r}, seed 0), median of {result['runs']} runs; "
        f"teacher: {result['teacher']}." + (f" {result['note']}" if result.get("note") else ""),
        "",
        "| model | steps | guidance | text_encode (s) | denoise (s) | decode (s) | encode (s) | total (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        s = m["seconds"]
        lines.append(
            f"| {name} | {m['steps']} | {'true CFG' if m['true_cfg'] else 'embedded'} "
            f"| {s['text_encode']:.3f} | {s['denoise']:.3f} | {s['decode']:.3f} | {s['encode']:.3f} "
            f"| {m['total_s']:.3f} |"
        )
    student_add = memory["student_mb"] - memory["before_mb"]
    teacher_add = memory["both_mb"] - memory["student_mb"]
    lines += [
        "",
        f"Resident memory: {memory['before_mb']:.0f} MB before loading, +{student_add:.0f} MB with the "
        f"student, +{teacher_add:.0f} MB more with the teacher ({memory['both_mb']:.0f} MB holding both; "
        "fp32 on the CPU).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="Videos per model (the median is reported).")
    parser.add_argument("--note", default="", help="A sentence for the report (e.g. what else ran).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    result = run(args.runs, args.note)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    update_benchmarks_doc("Several models in one worker (issue 25)", report(result))
    logger.info("wrote %s and docs/benchmarks.md", RESULTS)


if __name__ == "__main__":
    main()
