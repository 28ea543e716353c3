"""The whole-job part of the service benchmark (benchmarks/service.py): the service's overhead on one
job (submit -> completed -> MP4 downloaded) against calling the engine directly
(VideoPipeline.generate on the same bundle and request, in a process with the worker's thread
settings), interleaved runs, median ratio (target <= 5 %); and its paragraphs of the report.

Run just this part: python -m benchmarks.service --only-overhead
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.service_stack import API_KEY, CpuMeter, Stack, engine_env

logger = logging.getLogger(__name__)

OVERHEAD_TARGET = 0.05


ENGINE_CHILD = """
import json, sys, time
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
pipeline = VideoPipeline.from_dir(sys.argv[1], PipelineOptions(device="cpu"))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    body = json.loads(line)
    width, height = (int(v) for v in body.pop("size").split("x"))
    request = GenerationRequest(width=width, height=height, **body)
    start = time.perf_counter()
    result = pipeline.generate(request)
    total = time.perf_counter() - start
    print(json.dumps({"total_s": total, "bytes": len(result.mp4), "timings": result.timings}), flush=True)
"""


class DirectEngine:
    """VideoPipeline.generate in its own process, with the worker's thread settings and niceness."""

    def __init__(self, weights: Path, threads: int) -> None:
        env = {**os.environ, **engine_env(threads)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", ENGINE_CHILD, str(weights)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the direct-engine process exited with {self.process.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, body: dict[str, Any]) -> dict[str, Any]:
        """One generate(); with the CPU time (user + system) the process spent on it."""
        assert self.process.stdin is not None
        before = CpuMeter._tree_cpu([self.process.pid])
        self.process.stdin.write(json.dumps(body) + "\n")
        self.process.stdin.flush()
        result = self._read()
        result["cpu_s"] = CpuMeter._tree_cpu([self.process.pid]) - before
        return result

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(30)


def service_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit, wait for completion on the SSE feed (no polling interval in the measurement), then
    download the MP4: the wall time a client sees."""
    start = time.perf_counter()
    response = client.post("/v1/videos", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    submitted = time.perf_counter() - start
    final: dict[str, Any] = {}
    with client.stream("GET", f"/v1/videos/{job_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                final = json.loads(line[6:])
                if final["status"] in ("completed", "failed", "cancelled"):
                    break
    if final.get("status") != "completed":
        raise RuntimeError(f"job {job_id} ended {final.get('status')}: {final.get('error')}")
    completed = time.perf_counter() - start
    content = client.get(f"/v1/videos/{job_id}/content")
    content.raise_for_status()
    total = time.perf_counter() - start
    timings = final.get("timings") or {}
    return {
        "total_s": total,
        "submit_s": submitted,
        "completed_s": completed,
        "download_s": total - completed,
        "engine_s": sum(timings.values()),
        "timings": timings,
        "bytes": len(content.content),
    }


def overhead(stack: Stack, weights: Path, threads: int, body: dict[str, Any], repeats: int) -> dict[str, Any]:
    direct = DirectEngine(weights, threads)
    try:
        with httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600.0
        ) as client:
            direct.run(dict(body))  # warm both (first-call allocations, kernels)
            service_job(client, body)
            direct_runs, service_runs = [], []
            meter = CpuMeter(stack.pid_groups())
            for index in range(repeats):  # interleaved: drift in the machine's load hits both alike
                direct_runs.append(direct.run(dict(body)))
                meter.start()
                service_runs.append(service_job(client, body))
                used = meter.stop()["cpu_s"]
                # The service's CPU for the job: worker, API and Redis (not this client's).
                service_runs[-1]["cpu_s"] = used["worker"] + used["api"] + used["redis"]
                service_runs[-1]["cpu_by_process_s"] = used
                logger.info(
                    "job %d: direct %.3f s (%.3f s CPU), service %.3f s (%.3f s CPU)",
                    index,
                    direct_runs[-1]["total_s"],
                    direct_runs[-1]["cpu_s"],
                    service_runs[-1]["total_s"],
                    service_runs[-1]["cpu_s"],
                )
    finally:
        direct.close()
    direct_median = statistics.median(r["total_s"] for r in direct_runs)
    service_median = statistics.median(r["total_s"] for r in service_runs)
    pairs = list(zip(direct_runs, service_runs, strict=True))
    ratios = [s["total_s"] / d["total_s"] - 1 for d, s in pairs]
    per_step = [s["timings"]["denoise"] - d["timings"]["denoise"] for d, s in pairs]
    return {
        "request": body,
        "repeats": repeats,
        "direct_s": direct_runs,
        "service_s": service_runs,
        "direct_median_s": round(direct_median, 4),
        "service_median_s": round(service_median, 4),
        "overhead_of_medians": round(service_median / direct_median - 1, 4),
        "overhead_median_of_pairs": round(statistics.median(ratios), 4),
        "overhead_pairs_min": round(min(ratios), 4),
        "overhead_pairs_max": round(max(ratios), 4),
        # CPU time is much steadier than wall time on a shared machine: the service's processes
        # (worker + API + Redis) against the direct engine's process, per job.
        "direct_cpu_median_s": round(statistics.median(r["cpu_s"] for r in direct_runs), 4),
        "service_cpu_median_s": round(statistics.median(r["cpu_s"] for r in service_runs), 4),
        "cpu_overhead_median_of_pairs": round(
            statistics.median(s["cpu_s"] / d["cpu_s"] - 1 for d, s in pairs), 4
        ),
        "worker_cpu_overhead_median_of_pairs": round(
            statistics.median(s["cpu_by_process_s"]["worker"] / d["cpu_s"] - 1 for d, s in pairs), 4
        ),
        "api_cpu_median_s": round(statistics.median(s["cpu_by_process_s"]["api"] for s in service_runs), 4),
        "redis_cpu_median_s": round(
            statistics.median(s["cpu_by_process_s"]["redis"] for s in service_runs), 4
        ),
        "overhead_best": round(
            min(r["total_s"] for r in service_runs) / min(r["total_s"] for r in direct_runs) - 1, 4
        ),
        # The denoise stage is timed alike in both (the worker's includes its progress callback,
        # throttled progress writes and cancel check); the other stages are not comparable
        # (streaming times decode and encode interleaved).
        "denoise_direct_median_s": round(statistics.median(r["timings"]["denoise"] for r in direct_runs), 4),
        "denoise_service_median_s": round(
            statistics.median(r["timings"]["denoise"] for r in service_runs), 4
        ),
        "per_step_ms": round(1000 * statistics.median(per_step) / body["steps"], 3),
        "submit_response_median_s": round(statistics.median(r["submit_s"] for r in service_runs), 4),
        "download_median_s": round(statistics.median(r["download_s"] for r in service_runs), 4),
    }


# --- report --------------------------------------------------------------------------------------


def render_overhead(ov: dict[str, Any]) -> list[str]:
    req = ov["request"]
    pct = ov["overhead_median_of_pairs"] * 100
    cpu_pct = ov["cpu_overhead_median_of_pairs"] * 100
    best_direct = min(r["total_s"] for r in ov["direct_s"])
    best_service = min(r["total_s"] for r in ov["service_s"])
    step_direct_ms = 1000 * ov["denoise_direct_median_s"] / req["steps"]
    per_step_total = ov["per_step_ms"] * req["steps"] / 1000
    rest = (
        statistics.median(
            s["total_s"] - d["total_s"] for d, s in zip(ov["direct_s"], ov["service_s"], strict=True)
        )
        - per_step_total
    )
    submit_ms = ov["submit_response_median_s"] * 1000
    spread = (ov["overhead_pairs_max"] - ov["overhead_pairs_min"]) * 100
    rest_text = f"{rest:.3f} s" if rest >= 0 else f"less than the noise ({rest:+.3f} s)"

    def verdict(value: float) -> str:
        return "within" if value <= OVERHEAD_TARGET * 100 else "**over**"

    noisy = (
        f" Single pairs ranged from {ov['overhead_pairs_min'] * 100:+.1f}% to "
        f"{ov['overhead_pairs_max'] * 100:+.1f}%: the other load on the machine moves one run by more "
        "than the target, so the wall-time figure is only as good as that; the CPU-time one is steadier."
        if spread > OVERHEAD_TARGET * 100
        else ""
    )
    return [
        "",
        f"A whole job, {req['size']}, {req['num_frames']} frames, {req['steps']} steps, "
        f"{ov['repeats']} interleaved pairs: the engine called directly (`VideoPipeline.generate` in "
        "a warm process with the worker's thread settings) vs the service as a client sees it "
        "(POST, wait on the SSE feed, GET the MP4). CPU: the direct process's user + system time vs "
        "the worker's, the API's and Redis's during the job.",
        "",
        "| | wall, median (s) | wall, best (s) | denoise stage, median (s) | CPU, median (s) |",
        "|---|---:|---:|---:|---:|",
        f"| engine directly | {ov['direct_median_s']:.3f} | {best_direct:.3f} | "
        f"{ov['denoise_direct_median_s']:.3f} | {ov['direct_cpu_median_s']:.3f} |",
        f"| through the service | {ov['service_median_s']:.3f} | {best_service:.3f} | "
        f"{ov['denoise_service_median_s']:.3f} | {ov['service_cpu_median_s']:.3f} |",
        "",
        f"Overhead in wall time: **{pct:+.1f}%** (median of the paired ratios; "
        f"{ov['overhead_of_medians'] * 100:+.1f}% between the medians, {ov['overhead_best'] * 100:+.1f}% "
        f"between the best runs), {verdict(pct)} the issue's target of {OVERHEAD_TARGET * 100:.0f}%. In "
        f"CPU time: **{cpu_pct:+.1f}%**, {verdict(cpu_pct)} it: the worker "
        f"{ov['worker_cpu_overhead_median_of_pairs'] * 100:+.1f}% against the engine alone, plus the API "
        f"({ov['api_cpu_median_s']:.3f} s: the POST, the SSE feed, the download) and Redis "
        f"({ov['redis_cpu_median_s']:.3f} s); with a free core for the API and Redis, the wall-time cost "
        f"would be about the worker's share.{noisy}",
        "",
        f"Where it goes: {ov['per_step_ms']:.2f} ms per denoising step (the worker's progress callback "
        "and local cancel check at every step, and at most ten progress writes a second to Redis, "
        "each published to the SSE feed with the cancel flag coming back: "
        f"{per_step_total:.3f} s over {req['steps']} steps, against {step_direct_ms:.1f} ms of compute "
        f"per step for this model), and {rest_text} for the rest (the POST answered in "
        f"{submit_ms:.0f} ms, queue pickup, claim, the fragmented MP4 streamed to storage, thumbnail, "
        f"completion event, download in {ov['download_median_s'] * 1000:.0f} ms). With steps of 100 ms "
        f"or more (real models on a GPU) the per-step part would be {ov['per_step_ms']:.1f}% or less.",
    ]
