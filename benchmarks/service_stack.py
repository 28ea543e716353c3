"""The real service stack the service benchmark measures (benchmarks/service.py): redis-server, one
Celery worker and one `hyv serve --workers 0` API process, with the CPU accounting of each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

API_KEY = "bench-key-0123456789"
PROMPT = "a red circle moving right on a black background"


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
    settings: Any  # hyv.service.settings.Settings
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
    from hyv.engine.bundle import init_random_bundle, save_bundle

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
    from hyv.engine.bundle import read_bundle_spec
    from hyv.service.launcher import RedisServer, child_env, free_port, start_worker, stop_worker
    from hyv.service.settings import Settings

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
            [sys.executable, "-m", "hyv", "serve", "--workers", "0"],
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


def job_body(size: int, frames: int, steps: int, seed: int = 0) -> dict[str, Any]:
    return {"prompt": PROMPT, "size": f"{size}x{size}", "num_frames": frames, "steps": steps, "seed": seed}


# --- the machine's other load --------------------------------------------------------------------


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
