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

Writes benchmarks/results/service.json and the "Service" section of docs/benchmarks.md. The stack
is in benchmarks/service_stack.py, the whole-job part (2) in benchmarks/service_whole_job.py.

    python -m benchmarks.service [--duration 20] [--clients 1,32] [--weights DIR] [--quick]
    python -m benchmarks.service --only-overhead [--repeats 7]   # part 2 alone: printed, JSON in
                                                                 # results/service_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.service_stack import (
    API_KEY,
    CpuMeter,
    Stack,
    job_body,
    our_pids,
    prepare_bundle,
    running_stack,
    top_other_processes,
)
from benchmarks.service_whole_job import overhead, render_overhead, service_job

logger = logging.getLogger(__name__)

RESULTS = Path("benchmarks/results/service.json")
OVERHEAD_RESULTS = Path("benchmarks/results/service_overhead.json")
SECTION = "Service (issue 6)"
STATUS_TARGET_RPS = 1000.0
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


# --- load phases ---------------------------------------------------------------------------------


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

    from hyv.service.celery_app import celery_for
    from hyv.service.job_store import JobStore

    assert stack.settings.redis_url
    store = JobStore.connect(redis.Redis.from_url(stack.settings.redis_url))
    for job_id in job_ids:
        store.cancels.request(job_id)  # queued -> cancelled now; running -> stops at its next step
    with celery_for(stack.settings).connection_for_write() as connection:
        connection.default_channel.queue_purge(stack.settings.queue_name)
    deadline = time.monotonic() + timeout_s
    while store.jobs.running_ids() or any(w.get("busy_job") for w in store.workers.live()):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not go idle after the load phases")
        time.sleep(0.1)


# --- report --------------------------------------------------------------------------------------


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
    parser.add_argument(
        "--only-overhead",
        action="store_true",
        help="only the whole-job pairs (no load measurements): printed, written to "
        f"{OVERHEAD_RESULTS} (or --results), docs/benchmarks.md left as it is",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s loads, a tiny whole job")
    parser.add_argument("--results", type=Path, default=None, help=f"default: {RESULTS}")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.only_overhead and args.skip_overhead:
        parser.error("--only-overhead and --skip-overhead exclude each other")
    if args.only_overhead:
        args.no_doc = True  # the doc's section holds both parts of one run
    if args.results is None:
        args.results = OVERHEAD_RESULTS if args.only_overhead else RESULTS
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
            status_runs: list[dict[str, Any]] = []
            submit_runs: list[dict[str, Any]] = []
            if not args.only_overhead:
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
                "only_overhead": args.only_overhead,
            },
            "load_before": load_before,
            "status": status_runs,
            "submit": submit_runs,
            "overhead": ov,
        }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    if args.only_overhead and ov is not None:
        logger.info("the whole job:\n%s", "\n".join(render_overhead(ov)).strip())
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
