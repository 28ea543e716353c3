"""Load test: a real `hyv serve` (its own redis-server, worker processes, the API under uvicorn) on
loopback, driven by an open-loop asyncio + httpx client for minutes:

- POST /v1/videos at a fixed rate (small jobs; faster than the workers can render them, so they
  stay busy and the key's queued-job cap is reached), and GET /v1/videos/{id} at a fixed rate on
  the jobs still running;
- every answer must be expected: 201 or 429 (with a Retry-After) for a submission, 200 for a
  status read; anything else, or a transport error, is an error (there must be none);
- the number of unfinished jobs (GET /readyz: queue depth) must stay at or under the cap: the API
  answers 429 instead of letting the queue grow without bound;
- once the load stops, every accepted job must complete (none lost);
- the resident memory (RSS, /proc) of the API, each worker and Redis is sampled throughout: its
  growth from the end of the warm-up to the end is reported.

Requests in flight are bounded (--max-in-flight); a tick that finds no free slot is counted, not
queued, so the client never builds a backlog of its own. Latencies are measured in the client,
which shares the machine with the server.

    python -m benchmarks.load [--duration 180] [--submit-rate 5] [--poll-rate 50] [--workers 1]
                              [--queue-cap 16] [--weights DIR] [--out benchmarks/results/load.json]

Exits non-zero when a check fails. `python -m benchmarks.reliability` puts the latest results
(benchmarks/results/load.json) in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("benchmarks.load")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "load.json"
# ~1 s of a worker on the tiny model: at 5 submissions/s one worker falls behind, the queue fills up.
JOB = {
    "prompt": "a red circle moving right on a black background",
    "size": "64x64",
    "num_frames": 9,
    "steps": 100,
}
FINISHED = ("completed", "failed", "cancelled")


# --- the stack: `hyv serve` ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_bundle(root: Path) -> Path:
    from hyv.engine.bundle import init_random_bundle, save_bundle

    return save_bundle(init_random_bundle("tiny"), root / "hyv-tiny")


@contextlib.contextmanager
def serve(
    root: Path, weights: Path, workers: int, queue_cap: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`hyv serve` on a free loopback port; yields (base URL, its process); stopped with SIGINT."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        OMP_NUM_THREADS="1",
        HYV_DEVICE="cpu",
        HYV_RATE_LIMIT_PER_MINUTE="0",  # the cap on queued jobs is what this test reaches
        HYV_MAX_QUEUED_JOBS_PER_KEY=str(queue_cap),
        HYV_LOG_LEVEL="WARNING",
    )
    code = "import typer; from hyv.cli import serve; typer.run(serve)"
    command = [sys.executable, "-c", code, "--port", str(port), "--data-dir", str(root / "data")]
    command += ["--weights", str(weights), "--workers", str(workers)]
    log = root / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"hyv serve exited with {process.returncode}: {log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"hyv serve not ready in 300 s: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- memory: RSS from /proc ----------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_roles(serve_pid: int) -> dict[str, int]:
    """{"api": pid, "redis": pid, "worker1": main pid, "worker1_pool1": pool pid, ...}."""
    roles = {"api": serve_pid}
    workers = 0
    for child in sorted(_children(serve_pid)):
        command = _cmdline(child)
        if "redis-server" in command:
            roles["redis"] = child
        elif "celery" in command:
            workers += 1
            roles[f"worker{workers}"] = child
            for index, pool in enumerate(sorted(_children(child)), 1):
                roles[f"worker{workers}_pool{index}"] = pool
    return roles


# --- the load ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    submit_ms: list[float] = dataclasses.field(default_factory=list)  # 201s
    refused_ms: list[float] = dataclasses.field(default_factory=list)  # 429s
    status_ms: list[float] = dataclasses.field(default_factory=list)
    codes: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    retry_after: Counter[str] = dataclasses.field(default_factory=Counter)
    accepted: list[str] = dataclasses.field(default_factory=list)
    active: dict[str, None] = dataclasses.field(default_factory=dict)  # ordered set of unfinished ids
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    busy_ticks: Counter[str] = dataclasses.field(default_factory=Counter)
    max_queue_depth: int = 0
    poll_cursor: int = 0

    def error(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)
        self.codes["error"] += 1


async def submit(client: httpx.AsyncClient, tally: Tally, n: int) -> None:
    start = time.perf_counter()
    try:
        response = await client.post("/v1/videos", json={**JOB, "seed": n})
    except httpx.HTTPError as exc:
        tally.error(f"submit: {type(exc).__name__}: {exc}")
        return
    ms = (time.perf_counter() - start) * 1000
    tally.codes[f"submit_{response.status_code}"] += 1
    if response.status_code == 201:
        tally.submit_ms.append(ms)
        job_id = response.json()["id"]
        tally.accepted.append(job_id)
        tally.active[job_id] = None
    elif response.status_code == 429:
        tally.refused_ms.append(ms)
        retry_after = response.headers.get("retry-after", "")
        tally.retry_after[retry_after or "missing"] += 1
        if not retry_after.isdigit():
            tally.error(f"429 without a numeric Retry-After: {retry_after!r}")
    else:
        tally.error(f"submit: {response.status_code} {response.text[:200]}")


async def poll(client: httpx.AsyncClient, tally: Tally) -> None:
    if not tally.active:
        return
    ids = list(tally.active)
    job_id = ids[tally.poll_cursor % len(ids)]
    tally.poll_cursor += 1
    start = time.perf_counter()
    try:
        response = await client.get(f"/v1/videos/{job_id}")
    except httpx.HTTPError as exc:
        tally.error(f"status: {type(exc).__name__}: {exc}")
        return
    tally.status_ms.append((time.perf_counter() - start) * 1000)
    tally.codes[f"status_{response.status_code}"] += 1
    if response.status_code != 200:
        tally.error(f"status: {response.status_code} {response.text[:200]}")
        return
    status = response.json()["status"]
    if status in FINISHED and job_id in tally.active:
        del tally.active[job_id]
        tally.outcomes[status] += 1


async def ticker(
    name: str, rate: float, until: float, slots: asyncio.Semaphore, tally: Tally, make: Any
) -> None:
    """Start make() every 1/rate s until `until` (monotonic), each holding one of `slots`."""
    tasks: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    n = 0
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += 1.0 / rate
        if slots.locked():
            tally.busy_ticks[name] += 1
            continue
        await slots.acquire()
        task = asyncio.create_task(make(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda _: slots.release())
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def sample(
    client: httpx.AsyncClient, roles: dict[str, int], until: float, every_s: float, tally: Tally
) -> list[dict[str, Any]]:
    samples = []
    start = time.monotonic()
    while time.monotonic() < until:
        entry: dict[str, Any] = {"t": round(time.monotonic() - start, 1)}
        entry.update({role: rss_bytes(pid) for role, pid in roles.items()})
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            depth = int((await client.get("/readyz")).json()["queue_depth"])
            entry["queue_depth"] = depth
            tally.max_queue_depth = max(tally.max_queue_depth, depth)
        samples.append(entry)
        await asyncio.sleep(every_s)
    return samples


async def drive(url: str, roles: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        slots = asyncio.Semaphore(args.max_in_flight)
        until = time.monotonic() + args.duration
        memory, *_ = await asyncio.gather(
            sample(client, roles, until, args.sample_every, tally),
            ticker("submit", args.submit_rate, until, slots, tally, lambda n: submit(client, tally, n)),
            ticker("status", args.poll_rate, until, slots, tally, lambda n: poll(client, tally)),
        )
        # Drain: every accepted job must finish (none lost).
        deadline = time.monotonic() + args.drain_timeout
        while tally.active and time.monotonic() < deadline:
            await poll(client, tally)
            await asyncio.sleep(0.02)
    return {"tally": tally, "memory": memory}


# --- the report ----------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(values), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 2)}


def memory_growth(samples: list[dict[str, Any]], roles: list[str], warmup_s: float) -> dict[str, Any]:
    """Per process: RSS at the end of the warm-up, at the end, the growth and the peak (MiB)."""
    after = [s for s in samples if s["t"] >= warmup_s] or samples
    found = {}
    for role in roles:
        series = [s[role] for s in after if s.get(role)]
        if not series:
            continue
        start, end = series[0] / 2**20, series[-1] / 2**20
        found[role] = {
            "start_mib": round(start, 1),
            "end_mib": round(end, 1),
            "growth_mib": round(end - start, 1),
            "growth_pct": round(100 * (end - start) / start, 1) if start else 0.0,
            "peak_mib": round(max(series) / 2**20, 1),
        }
    return found


def summarize(run: dict[str, Any], roles: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    tally: Tally = run["tally"]
    accepted = len(tally.accepted)
    lost = len(tally.active)  # accepted and never seen finished, even after the drain
    checks = {
        "no_errors": tally.codes["error"] == 0,
        "cap_reached_429": tally.codes["submit_429"] > 0,
        "retry_after_on_every_429": "missing" not in tally.retry_after,
        "queue_bounded_by_cap": tally.max_queue_depth <= args.queue_cap,
        "none_lost": lost == 0 and tally.outcomes["completed"] == accepted,
    }
    return {
        "meta": {
            "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "command": "python -m benchmarks.load " + " ".join(sys.argv[1:]),
        },
        "params": {
            "duration_s": args.duration,
            "submit_rate_per_s": args.submit_rate,
            "poll_rate_per_s": args.poll_rate,
            "workers": args.workers,
            "queue_cap": args.queue_cap,
            "max_in_flight": args.max_in_flight,
            "warmup_s": args.warmup,
            "sample_every_s": args.sample_every,
            "job": JOB,
        },
        "requests": dict(sorted(tally.codes.items())),
        "errors": tally.errors,
        "retry_after_values": dict(tally.retry_after),
        "busy_ticks": dict(tally.busy_ticks),
        "jobs": {"accepted": accepted, **dict(tally.outcomes), "lost": lost},
        "max_queue_depth": tally.max_queue_depth,
        "latency_ms": {
            "submit_201": percentiles(tally.submit_ms),
            "submit_429": percentiles(tally.refused_ms),
            "status": percentiles(tally.status_ms),
        },
        "rss": memory_growth(run["memory"], list(roles), args.warmup),
        "checks": checks,
        "passed": all(checks.values()),
    }


ROLE_NAMES = {"api": "API (`hyv serve`: uvicorn)", "redis": "redis-server"}


def _worker_role_name(role: str) -> str:
    """worker1 -> "worker 1: Celery main process", worker1_pool1 -> "worker 1: pool process 1 (the
    model)"."""
    worker, _, pool = role.partition("_pool")
    number = worker.removeprefix("worker")
    if pool:
        return f"worker {number}: pool process {pool} (the model)"
    return f"worker {number}: Celery main process"


def render_markdown(report: dict[str, Any]) -> list[str]:
    """The "Load test" section of docs/reliability.md (written by benchmarks/reliability.py)."""
    meta, params, requests = report["meta"], report["params"], report["requests"]
    jobs, latency = report["jobs"], report["latency_ms"]
    job = params["job"]
    retry = ", ".join(f"{value} s" for value in report["retry_after_values"]) or "-"
    failed = [name for name, ok in report["checks"].items() if not ok]
    lines = [
        "## Load test",
        "",
        f"_Run {meta['generated']} on {meta['machine']} (load average "
        f"{meta.get('load_average_end', ['?'])[0]} at the end: a shared machine): `{meta['command']}`._",
        "",
        f"{params['duration_s']:.0f} s of load on a real `hyv serve` on loopback (its own Redis, "
        f"{params['workers']} worker, the API under uvicorn; the tiny model): "
        f"{params['submit_rate_per_s']:g} submissions/s of {job['size']}, {job['num_frames']}-frame, "
        f"{job['steps']}-step jobs (more than the worker renders, so it is always busy and the "
        f"queued-job cap of {params['queue_cap']} is reached), {params['poll_rate_per_s']:g} status "
        f"reads/s of the unfinished jobs, at most {params['max_in_flight']} requests in flight. The "
        "client is asyncio + httpx on the same machine; latencies are measured in it.",
        "",
        "| | |",
        "|---|---|",
        f"| submissions | {requests.get('submit_201', 0)} accepted (201), "
        f"{requests.get('submit_429', 0)} refused (429, Retry-After: {retry}) |",
        f"| status reads | {requests.get('status_200', 0)} (200) |",
        f"| errors (any other answer, transport errors) | {requests.get('error', 0)} |",
        f"| jobs accepted / completed / failed / lost | {jobs['accepted']} / {jobs.get('completed', 0)} / "
        f"{jobs.get('failed', 0)} / {jobs['lost']} |",
        f"| queue depth, max seen (cap) | {report['max_queue_depth']} ({params['queue_cap']}) |",
        "",
        "| latency (ms) | n | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"submit_201": "submit, accepted", "submit_429": "submit, refused (429)", "status": "status"}
    for key, name in names.items():
        stats = latency[key]
        if stats.get("n"):
            cells = [stats[k] for k in ("n", "p50", "p90", "p99", "max")]
            lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        f"Resident memory (/proc, every {report['params'].get('sample_every_s', 2):g} s) from the end "
        f"of the warm-up ({report['params'].get('warmup_s', 30):g} s) to the end of the load; Redis "
        "keeps every job's record for a day, so it grows with the jobs accepted:",
        "",
        "| process | RSS after warm-up (MiB) | at the end | growth | peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for role, rss in report["rss"].items():
        name = ROLE_NAMES.get(role, _worker_role_name(role))
        lines.append(
            f"| {name} | {rss['start_mib']} | {rss['end_mib']} | {rss['growth_mib']:+} "
            f"({rss['growth_pct']:+}%) | {rss['peak_mib']} |"
        )
    lines += [
        "",
        "**Checks: all passed.**" if not failed else f"**Checks FAILED: {', '.join(failed)}.**",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--submit-rate", type=float, default=5.0, help="submissions per second")
    parser.add_argument("--poll-rate", type=float, default=50.0, help="status reads per second")
    parser.add_argument("--workers", type=int, default=1, help="worker processes `hyv serve` starts")
    parser.add_argument("--queue-cap", type=int, default=16, help="HYV_MAX_QUEUED_JOBS_PER_KEY")
    parser.add_argument("--max-in-flight", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--warmup", type=float, default=None, help="s before RSS growth is measured")
    parser.add_argument("--sample-every", type=float, default=2.0, help="s between RSS samples")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="s to wait for the last jobs")
    parser.add_argument("--weights", type=Path, default=None, help="model bundle (default: tiny, random)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(30.0, args.duration / 5)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    with tempfile.TemporaryDirectory(prefix="hyv-load-") as tmp:
        root = Path(tmp)
        weights = args.weights or tiny_bundle(root)
        with serve(root, weights, args.workers, args.queue_cap) as (url, process):
            roles = process_roles(process.pid)
            logger.info("load on %s for %.0f s; processes %s", url, args.duration, roles)
            run = asyncio.run(drive(url, roles, args))
    report = summarize(run, roles, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    logger.info(json.dumps({k: report[k] for k in ("requests", "jobs", "latency_ms", "checks")}, indent=1))
    for role, growth in report["rss"].items():
        logger.info("RSS %-14s %7.1f -> %7.1f MiB (%+.1f)", role, growth["start_mib"], growth["end_mib"],
                    growth["growth_mib"])  # fmt: skip
    logger.info("%s; wrote %s", "PASSED" if report["passed"] else "FAILED", args.out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
