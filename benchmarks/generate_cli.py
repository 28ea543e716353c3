"""`hyv generate` as a user runs it (a new process, model load included) at every video bucket of
the bundled model, against the default request (64x64, 17 frames) timed in the same run: wall time
per bucket (median of repeats, runs interleaved so machine load hits every bucket alike) and its
ratio to the default. Writes benchmarks/results/generate_cli.json and its section of
docs/benchmarks.md.

    python -m benchmarks.generate_cli [--weights DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine_description, update_benchmarks_doc
from hyv.engine.bundle import CHECKOUT_BUNDLE_DIR, read_bundle_spec

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/generate_cli.json")
PROMPT = "a red circle moving right on a black background"
# Issue 23's bounds on this machine, model load included.
BOUNDS_S = {(64, 64, 17): 5.0, (128, 128, 33): 30.0}


def video_buckets(weights: Path) -> list[tuple[int, int, int]]:
    """(width, height, frames) of every served video bucket, the default request first."""
    limits = read_bundle_spec(weights).limits
    default = (limits.width, limits.height, limits.num_frames)
    buckets = [(w, h, f) for f in limits.frame_counts if f > 1 for w, h in limits.buckets]
    return [default] + [b for b in buckets if b != default]


def time_generate(weights: Path, bucket: tuple[int, int, int], out: Path) -> float:
    """Wall seconds of one `hyv generate` process for `bucket`; raises naming the failure."""
    width, height, frames = bucket
    command = [
        sys.executable, "-m", "hyv", "generate", PROMPT, "--weights", str(weights), "--out", str(out),
        "--width", str(width), "--height", str(height), "--frames", str(frames), "--seed", "0",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"hyv generate {width}x{height}x{frames} failed: {done.stderr[-2000:]}")
    return seconds


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}. `hyv generate` with the bundled model ({results['weights']}), "
        f"a new process per run (interpreter start and model load included), median of "
        f"{results['repeats']} interleaved runs; ratio to the default request in the same run.",
        "",
        "| bucket (WxHxframes) | wall (s) | vs default | bound |",
        "|---|---|---|---|",
    ]
    for row in results["buckets"]:
        bound = (
            f"<= {row['bound_s']:.0f} s: {'PASS' if row['within_bound'] else 'FAIL'}"
            if row["bound_s"]
            else "-"
        )
        lines.append(f"| {row['bucket']} | {row['median_s']:.2f} | {row['ratio']:.2f}x | {bound} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=CHECKOUT_BUNDLE_DIR)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    buckets = video_buckets(args.weights)
    runs: dict[tuple[int, int, int], list[float]] = {b: [] for b in buckets}
    with tempfile.TemporaryDirectory() as tmp:
        time_generate(args.weights, buckets[0], Path(tmp) / "warm.mp4")  # page cache, bytecode
        for repeat in range(args.repeats):
            for bucket in buckets:
                runs[bucket].append(time_generate(args.weights, bucket, Path(tmp) / "out.mp4"))
                logger.info("repeat %d %s: %.2f s", repeat, bucket, runs[bucket][-1])
    default = statistics.median(runs[buckets[0]])
    rows = []
    for bucket, seconds in runs.items():
        median = statistics.median(seconds)
        bound = BOUNDS_S.get(bucket)
        rows.append(
            {
                "bucket": "x".join(map(str, bucket)),
                "runs_s": seconds,
                "median_s": median,
                "ratio": median / default,
                "bound_s": bound,
                "within_bound": None if bound is None else median <= bound,
            }
        )
    results = {
        "machine": machine_description(),
        "weights": str(args.weights),
        "repeats": args.repeats,
        "buckets": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    update_benchmarks_doc("hyv generate per bucket (issue 23)", render(results))
    logger.info("wrote %s and docs/benchmarks.md", RESULTS)


if __name__ == "__main__":
    main()
