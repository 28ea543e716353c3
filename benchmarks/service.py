"""Service benchmark: the real stack (redis-server, one Celery worker, one `hyv serve` API process
under uvicorn) on a model bundle, measured from outside over HTTP:

1. GET /v1/videos/{id} (status) and POST /v1/videos (submit) latency p50/p99 and requests/s under N
   concurrent keep-alive clients while the worker is busy rendering (issue 6 target: >= 1000 status
   requests/s from one uvicorn process);
2. the service's overhead on a whole job (submit -> completed -> MP4 downloaded) against calling the
   engine directly (VideoPipeline.generate on the same bundle and request, in a process with the same
   thread settings as the worker), interleaved runs, median ratio (target <= 5 %).

The load client is a minimal asyncio HTTP/1.1 client on raw sockets (uvloop if installed) so that it
costs little CPU next to the server; the CPU every process used during a measurement (client, API,
Redis, worker, everything else on the machine) is recorded alongside, since the machine may be shared.

Writes benchmarks/results/service.json and the "Service" section of docs/benchmarks.md.

    python -m benchmarks.service [--duration 20] [--clients 1,32] [--weights DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

logger = logging.getLogger(__name__)

RESULTS = Path("benchmarks/results/service.json")
SECTION = "Service (issue 6)"
API_KEY = "bench-key-0123456789"
PROMPT = "a red circle moving right on a black background"
STATUS_TARGET_RPS = 1000.0
OVERHEAD_TARGET = 0.05
WARMUP_S = 2.0


# --- a minimal HTTP/1.1 client -------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length (the JSON routes do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def get_request(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()


def post_json_request(path: str, host: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# --- CPU accounting ------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by named process groups (and the whole machine) between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._machine = 0.0

    @staticmethod
    def _tree_cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for proc in [process, *process.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = proc.cpu_times()
                        total += times.user + times.system
        return total

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _self_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._start = {name: self._tree_cpu(pids) for name, pids in self.groups.items()}
        self._start["client"] = self._self_cpu()
        self._machine = self._machine_busy()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        used = {name: self._tree_cpu(pids) - self._start[name] for name, pids in self.groups.items()}
        used["client"] = self._self_cpu() - self._start["client"]
        machine = self._machine_busy() - self._machine
        cores = {name: round(seconds / wall, 3) for name, seconds in used.items()}
        cores["other"] = round(max(0.0, machine - sum(used.values())) / wall, 3)
        cores["machine"] = round(machine / wall, 3)
        return {
            "cores_used": cores,
            "cpu_s": {name: round(seconds, 4) for name, seconds in used.items()},
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }


# --- the stack -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    host: str
    port: int
    settings: Any  # service.settings.Settings
    redis_pid: int
    worker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    logs: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid_groups(self) -> dict[str, list[int]]:
        return {"api": [self.api.pid], "redis": [self.redis_pid], "worker": [self.worker.pid]}


def prepare_bundle(root: Path, weights: Path | None) -> Path:
    """--weights as given, or the tiny random bundle with limits raised so that a job can be made
    to last a few seconds (size, frames and steps; the model itself is unchanged)."""
    if weights is not None:
        return weights
    from engine.bundle import init_random_bundle, save_bundle

    bundle = init_random_bundle("tiny")
    limits = dataclasses.replace(
        bundle.spec.limits, max_width=256, max_height=256, max_frames=65, max_steps=1000
    )
    bundle.spec = dataclasses.replace(bundle.spec, limits=limits)
    return save_bundle(bundle, root / "bundle")


def engine_env(threads: int) -> dict[str, str]:
    """Thread settings shared by the worker and the direct-engine process."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def running_stack(root: Path, weights: Path, threads: int) -> Iterator[Stack]:
    from engine.bundle import read_bundle_spec
    from service.launcher import RedisServer, child_env, free_port, start_worker, stop_worker
    from service.settings import Settings

    spec = read_bundle_spec(weights)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The children's metrics folder, set in their environment only (`hyv serve` clears it at start).
    metrics_env = {"PROMETHEUS_MULTIPROC_DIR": str(root / "data" / "metrics")}
    (root / "data" / "metrics").mkdir(parents=True, exist_ok=True)
    with RedisServer(root / "redis", persist=False) as redis_server:
        settings = Settings(
            redis_url=redis_server.url,
            data_dir=root / "data",
            weights=weights,
            model_name=spec.name,
            device="cpu",
            dtype="fp32",
            api_keys=[API_KEY],
            rate_limit_per_minute=0,  # the submit benchmark would hit the per-key limit at once
            max_queued_jobs_per_key=10**9,
            port=free_port(),
        )
        env = {**child_env(settings), **metrics_env}
        env.setdefault("HYV_LOG_LEVEL", "INFO")
        api_log = (logs / "api.log").open("ab")
        # Exactly the production API process: `hyv serve --workers 0` on an existing Redis.
        api = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--workers", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api_log.close()
        worker: subprocess.Popen[bytes] | None = None
        try:
            # The worker after the API is up: `hyv serve` clears the metrics folder as it starts.
            wait_http(f"http://127.0.0.1:{settings.port}/healthz", api, logs / "api.log")
            worker_env = {**engine_env(threads), **metrics_env}
            worker = start_worker(settings, "bench", log_path=logs / "worker.log", extra_env=worker_env)
            assert redis_server.process is not None
            stack = Stack("127.0.0.1", settings.port, settings, redis_server.process.pid, worker, api, logs)
            wait_http(f"{stack.base_url}/readyz", worker, logs / "worker.log")
            yield stack
        finally:
            stop_worker(api, grace_s=10.0)
            if worker is not None:
                stop_worker(worker, grace_s=10.0)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 300.0) -> None:
    """Until `url` answers 200; fails early, with the log's tail, if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 in {timeout_s} s (log: {log})")
        time.sleep(0.2)


# --- load phases ---------------------------------------------------------------------------------


def job_body(size: int, frames: int, steps: int, seed: int = 0) -> dict[str, Any]:
    return {"prompt": PROMPT, "size": f"{size}x{size}", "num_frames": frames, "steps": steps, "seed": seed}


async def run_load(
    host: str,
    port: int,
    clients: int,
    duration_s: float,
    make_request: Callable[[int], bytes],
    expect: int,
    meter: CpuMeter,
    on_body: Callable[[bytes], None] | None = None,
) -> dict[str, Any]:
    """`clients` connections in a closed loop for WARMUP_S + duration_s; statistics over the last
    duration_s only."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    measuring = False
    end = loop.time() + WARMUP_S + duration_s
    counter = iter(range(10**12))

    async def client() -> None:
        connection = await Connection.open(host, port)
        try:
            while loop.time() < end:
                data = make_request(next(counter))
                start = time.perf_counter()
                status, body = await connection.request(data)
                elapsed = time.perf_counter() - start
                if measuring:
                    latencies.append(elapsed)
                    codes[status] += 1
                    if on_body is not None and status == expect:
                        on_body(body)
        finally:
            await connection.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(WARMUP_S)
    measuring = True
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    latencies.sort()
    ok = codes.get(expect, 0)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(latencies),
        "ok": ok,
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "requests_per_s": round(ok / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round((latencies[-1] if latencies else float("nan")) * 1000, 2),
        **cpu,
    }


class Feeder:
    """Keeps the worker busy: at least `depth` of its jobs queued or running at every moment."""

    def __init__(self, host: str, port: int, body: dict[str, Any], depth: int = 2) -> None:
        self.host, self.port, self.body, self.depth = host, port, body, depth
        self.ids: list[str] = []  # every job it submitted
        self.active: list[str] = []  # its jobs queued or running now
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        connection = await Connection.open(self.host, self.port)
        try:
            while True:
                still = []
                for job_id in self.active:
                    _, body = await connection.request(get_request(f"/v1/videos/{job_id}", self.host))
                    if json.loads(body)["status"] in ("queued", "in_progress"):
                        still.append(job_id)
                self.active = still
                while len(self.active) < self.depth:
                    request = post_json_request("/v1/videos", self.host, self.body)
                    status, body = await connection.request(request)
                    if status != 201:
                        raise RuntimeError(f"feeder submit: {status} {body[:300]!r}")
                    job_id = json.loads(body)["id"]
                    self.active = [*self.active, job_id]
                    self.ids.append(job_id)
                await asyncio.sleep(0.25)
        finally:
            await connection.close()

    async def __aenter__(self) -> Feeder:
        self._task = asyncio.create_task(self._loop())
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_in_progress(host: str, port: int, job_id: str, timeout_s: float = 60.0) -> None:
    connection = await Connection.open(host, port)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, body = await connection.request(get_request(f"/v1/videos/{job_id}", host))
            if json.loads(body)["status"] != "queued":
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not start in {timeout_s} s")
    finally:
        await connection.close()


async def load_phases(
    stack: Stack, clients_list: list[int], duration_s: float, busy_body: dict[str, Any], polled: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    host, port = stack.host, stack.port
    meter = CpuMeter(stack.pid_groups())
    status_runs, submit_runs, submitted = [], [], []
    async with Feeder(host, port, busy_body) as feeder:
        await wait_in_progress(host, port, feeder.ids[0])

        # What clients poll, in turn: the jobs running and queued now (a queued job's answer has
        # its queue position) and completed ones.
        def status_request(index: int) -> bytes:
            targets = [*feeder.active, *polled]
            return get_request(f"/v1/videos/{targets[index % len(targets)]}", host)

        for clients in clients_list:
            logger.info("status: %d clients, %.0f s", clients, duration_s)
            result = await run_load(host, port, clients, duration_s, status_request, 200, meter)
            logger.info("status: %s", result)
            status_runs.append(result)
        submit = post_json_request("/v1/videos", host, job_body(32, 5, 2))
        for clients in clients_list:
            logger.info("submit: %d clients, %.0f s", clients, duration_s)
            result = await run_load(
                host,
                port,
                clients,
                duration_s,
                lambda _: submit,
                201,
                meter,
                on_body=lambda body: submitted.append(json.loads(body)["id"]),
            )
            logger.info("submit: %s", result)
            submit_runs.append(result)
    return status_runs, submit_runs, [*feeder.ids, *submitted]


def drain(stack: Stack, job_ids: list[str], timeout_s: float = 300.0) -> None:
    """Cancel the load phases' jobs, empty the Celery queue, wait for the worker to be idle."""
    import redis

    from service.celery_app import celery_for
    from service.jobs import JobStore

    assert stack.settings.redis_url
    store = JobStore(redis.Redis.from_url(stack.settings.redis_url))
    for job_id in job_ids:
        store.request_cancel(job_id)  # queued -> cancelled now; running -> stops at its next step
    with celery_for(stack.settings).connection_for_write() as connection:
        connection.default_channel.queue_purge(stack.settings.queue_name)
    deadline = time.monotonic() + timeout_s
    while store.running_ids() or any(w.get("busy_job") for w in store.workers()):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not go idle after the load phases")
        time.sleep(0.1)


# --- a whole job: the service vs the engine ------------------------------------------------------


ENGINE_CHILD = """
import json, sys, time
from engine.pipeline import PipelineOptions, VideoPipeline
from engine.request import GenerationRequest
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
        # The denoise stage is timed alike in both (the worker's includes its per-step progress write
        # and cancel check); the other stages are not comparable (streaming times decode and encode
        # interleaved).
        "denoise_direct_median_s": round(statistics.median(r["timings"]["denoise"] for r in direct_runs), 4),
        "denoise_service_median_s": round(
            statistics.median(r["timings"]["denoise"] for r in service_runs), 4
        ),
        "per_step_ms": round(1000 * statistics.median(per_step) / body["steps"], 3),
        "submit_response_median_s": round(statistics.median(r["submit_s"] for r in service_runs), 4),
        "download_median_s": round(statistics.median(r["download_s"] for r in service_runs), 4),
    }


# --- report --------------------------------------------------------------------------------------


def top_other_processes(exclude: set[int], sample_s: float = 3.0) -> list[str]:
    """The busiest processes that are not ours, over a short sample (to name the machine's load)."""
    procs = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "nice"]):
        if proc.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
            procs[proc.pid] = proc
    time.sleep(sample_s)
    busy = []
    for pid, proc in procs.items():
        with contextlib.suppress(psutil.Error):
            percent = proc.cpu_percent(None)
            if percent >= 10:
                cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:60]
                busy.append((percent, f"{cmd} (pid {pid}, nice {proc.info['nice']}): {percent:.0f}% CPU"))
    return [text for _, text in sorted(busy, reverse=True)[:5]]


def our_pids(stack: Stack) -> set[int]:
    pids = {os.getpid()}
    for pid_list in stack.pid_groups().values():
        for pid in pid_list:
            pids.add(pid)
            with contextlib.suppress(psutil.Error):
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return pids


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"Machine: {results['machine']}; Python {results['python']}. "
        f"Load before measuring: load average {results['load_before']['load_average']}; "
        + (
            "**shared with other work** (busiest other processes: "
            + "; ".join(results["load_before"]["busy_other_processes"])
            + "), so every number below is what the service got next to it."
            if results["load_before"]["busy_other_processes"]
            else "nothing else busy."
        ),
        "",
        f"Stack: redis-server, one Celery worker ({cfg['threads']} torch thread(s)) on "
        f"`{cfg['bundle']}`, one `hyv serve --workers 0` API process (uvicorn, loop "
        f"{cfg['uvicorn_loop']}, http {cfg['uvicorn_http']}), one API key; the benchmark ran at nice "
        f"{cfg['nice']} (its children too). Load: a raw-socket asyncio HTTP/1.1 client, keep-alive "
        f"connections in a closed loop, {cfg['duration_s']:.0f} s per row after {WARMUP_S:.0f} s of warm-up, "
        "while the worker renders jobs back to back (status rows poll a running, a queued and "
        "completed jobs in turn). CPU columns: cores used on average during the row (the client is "
        "this benchmark's own process; *other* is everything else on the machine).",
        "",
        "| route | clients | requests/s | p50 ms | p99 ms | API CPU per request (µs) | API cores | "
        "Redis | worker | client | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in (("GET /v1/videos/{id}", results["status"]), ("POST /v1/videos", results["submit"])):
        for run in runs:
            c = run["cores_used"]
            bad = sum(v for k, v in run["codes"].items() if k != ("200" if name.startswith("GET") else "201"))
            lines.append(
                f"| {name} | {run['clients']} | {run['requests_per_s']:.0f}"
                + (f" ({bad} errors)" if bad else "")
                + f" | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {api_cpu_us(run):.0f} | {c['api']:.2f} | "
                f"{c['redis']:.2f} | {c['worker']:.2f} | {c['client']:.2f} | {c['other']:.2f} |"
            )
    best_run = max(results["status"], key=lambda run: run["requests_per_s"])
    best = best_run["requests_per_s"]
    verdict = "meets" if best >= STATUS_TARGET_RPS else "**misses**"
    lines += [
        "",
        f"Status reads: best {best:.0f} requests/s from one uvicorn process; {verdict} the issue's "
        f"target of {STATUS_TARGET_RPS:.0f}/s. That process got {best_run['cores_used']['api']:.2f} of a "
        f"core there (the machine was at {best_run['cores_used']['machine']:.2f} of 2 cores busy); at "
        f"{api_cpu_us(best_run):.0f} µs of CPU per request, a whole core would serve about "
        f"{1e6 / api_cpu_us(best_run):.0f}/s.",
    ]
    ov = results.get("overhead")
    if ov:
        lines += render_overhead(ov)
    return "\n".join(lines)


def api_cpu_us(run: dict[str, Any]) -> float:
    """The API process's CPU time per answered request, in µs (the machine's load aside)."""
    return 1e6 * run["cores_used"]["api"] / max(run["requests_per_s"], 1e-9)


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
        f"Where it goes: {ov['per_step_ms']:.2f} ms per denoising step (the worker writes the step to "
        "Redis, which publishes it to the SSE feed, and the cancel flag comes back with that write: "
        f"{per_step_total:.3f} s over {req['steps']} steps, against {step_direct_ms:.1f} ms of compute "
        f"per step for this model), and {rest_text} for the rest (the POST answered in "
        f"{submit_ms:.0f} ms, queue pickup, claim, the fragmented MP4 streamed to storage, thumbnail, "
        f"completion event, download in {ov['download_median_s'] * 1000:.0f} ms). With steps of 100 ms "
        f"or more (real models on a GPU) the per-step part would be {ov['per_step_ms']:.1f}% or less.",
    ]


# --- main ----------------------------------------------------------------------------------------


def uvicorn_choices() -> tuple[str, str]:
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def run_async(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load measurement")
    parser.add_argument("--clients", default="1,32", help="concurrent clients, comma separated")
    parser.add_argument("--weights", type=Path, default=None, help="a bundle (default: tiny, random)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker and engine")
    parser.add_argument("--size", type=int, default=128, help="the whole-job request: width = height")
    parser.add_argument("--frames", type=int, default=65)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="whole-job pairs (direct, service)")
    parser.add_argument(
        "--skip-overhead", action="store_true", help="only the load measurements (no whole-job pairs)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s loads, a tiny whole job")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.clients, args.repeats = 1.0, "4", 1
        args.size, args.frames, args.steps = 32, 5, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    whole_job = job_body(args.size, args.frames, args.steps)
    loop, http = uvicorn_choices()
    with tempfile.TemporaryDirectory(prefix="hyv-bench-") as tmp:
        root = Path(tmp)
        weights = prepare_bundle(root, args.weights)
        with running_stack(root, weights, args.threads) as stack:
            exclude = our_pids(stack)
            load_before = {
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "busy_other_processes": top_other_processes(exclude),
            }
            logger.info("machine load before measuring: %s", load_before)
            # Warm the worker, and leave completed jobs for the status readers to poll.
            with httpx.Client(
                base_url=stack.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600.0
            ) as client:
                for seed in range(2):
                    service_job(client, job_body(32, 5, 2, seed))
                polled = [video["id"] for video in client.get("/v1/videos").json()["data"]]
            status_runs, submit_runs, made = run_async(
                load_phases(stack, clients_list, args.duration, whole_job, polled)
            )
            drain(stack, made)
            ov = (
                None
                if args.skip_overhead
                else overhead(stack, weights, args.threads, whole_job, args.repeats)
            )
        results = {
            "machine": machine_summary(),
            "python": platform.python_version(),
            "config": {
                "bundle": "tiny (random weights, limits raised)"
                if args.weights is None
                else str(args.weights),
                "threads": args.threads,
                "duration_s": args.duration,
                "clients": clients_list,
                "uvicorn_loop": loop,
                "uvicorn_http": http,
                "nice": os.nice(0),
                "quick": args.quick,
            },
            "load_before": load_before,
            "status": status_runs,
            "submit": submit_runs,
            "overhead": ov,
        }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    if not args.no_doc:
        from benchmarks.report import update_benchmarks_doc

        update_benchmarks_doc(SECTION, render(results))
    logger.info("wrote %s%s", args.results, "" if args.no_doc else " and docs/benchmarks.md")
    return results


def machine_summary() -> str:
    from benchmarks.report import machine_description

    return machine_description()


if __name__ == "__main__":
    main()
