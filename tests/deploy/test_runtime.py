"""The two helpers that run inside the containers: hyv/service/metrics_exporter.py (serves a container's
multiprocess metrics and supervises the worker) and hyv/service/healthcheck.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hyv.service.metrics_exporter import clear_stale_files, parse_args
from tests.deploy.conftest import free_port, stop_group, wait_until

CHILD = """
import os, signal, sys, time
from prometheus_client import Counter
c = Counter("hyv_jobs_finished_total", "x", ["model", "status"])
c.labels("m", "completed").inc(3)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
open(sys.argv[1], "w").write("ready")
time.sleep(60)
"""


def test_parse_args() -> None:
    args = parse_args(["--port", "9200", "--dir", "/tmp/m", "--", "hyv", "worker", "--name", "gpu0"])
    assert (args.port, args.dir, args.command) == (9200, Path("/tmp/m"), ["hyv", "worker", "--name", "gpu0"])
    assert parse_args(["--dir", "/tmp/m"]).command == []
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "hyv.service.metrics_exporter", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_clear_stale_files(tmp_path: Path) -> None:
    (tmp_path / "counter_12.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    assert clear_stale_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.timeout(120)
def test_exporter_serves_the_child_metrics_and_forwards_sigterm(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale from an earlier run")
    ready = tmp_path / "ready"
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyv.service.metrics_exporter",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--",
            sys.executable,
            "-c",
            CHILD,
            str(ready),
        ],
        env=env,
        start_new_session=True,
    )
    try:
        wait_until(ready.exists, 60, "the child to start")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'hyv_jobs_finished_total{model="m",status="completed"} 3.0' in text
        assert not (metrics_dir / "counter_99999.db").exists(), "stale files are cleared at start"
        os.kill(process.pid, signal.SIGTERM)  # what `docker stop` sends (via tini)
        assert process.wait(30) == 7, "the child's exit status is the exporter's"
    finally:
        stop_group(process)


@pytest.mark.timeout(60)
def test_exporter_without_command_serves_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyv.service.metrics_exporter",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
        ],
        start_new_session=True,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "the exporter to answer")
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        stop_group(process)


def test_healthcheck_usage_and_missing_redis() -> None:
    from hyv.service import healthcheck

    assert healthcheck.main(["nonsense"]) == 2
    saved = os.environ.pop("HYV_REDIS_URL", None)
    try:
        assert healthcheck.check_worker() == "HYV_REDIS_URL is not set"
    finally:
        if saved is not None:
            os.environ["HYV_REDIS_URL"] = saved


def test_healthcheck_reads_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe asks the port and the Redis of the service's settings (HYV_PORT, HYV_REDIS_URL)."""
    from hyv.service import healthcheck

    port = free_port()  # nothing listens there
    monkeypatch.setenv("HYV_PORT", str(port))
    assert f"http://127.0.0.1:{port}/healthz" in str(healthcheck.check_api(timeout_s=2))
    monkeypatch.setenv("HYV_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    assert str(healthcheck.check_worker(timeout_s=2)).startswith("redis: ")
