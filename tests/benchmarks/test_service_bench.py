"""A quick smoke run of benchmarks/service.py: the real stack (redis-server, a Celery worker, the
`hyv serve` API process) for about a second per measurement, results and doc section in tmp."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import report
from benchmarks import service as bench


def test_percentile_and_requests() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.5) in (50.0, 51.0)
    assert bench.percentile(values, 0.99) == 99.0
    request = bench.post_json_request("/v1/videos", "h", {"prompt": "x"})
    head, body = request.split(b"\r\n\r\n", 1)
    assert json.loads(body) == {"prompt": "x"}
    assert f"Content-Length: {len(body)}".encode() in head
    assert bench.get_request("/v1/videos/v", "h").startswith(b"GET /v1/videos/v HTTP/1.1\r\n")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run(tmp_path, monkeypatch) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    monkeypatch.setattr(report, "DOC", tmp_path / "benchmarks.md")
    out = tmp_path / "service.json"
    results = bench.main(["--quick", "--results", str(out)])

    assert json.loads(out.read_text())["config"]["quick"] is True
    for run in (*results["status"], *results["submit"]):
        assert run["requests"] > 0 and run["ok"] == run["requests"], run
        assert run["p50_ms"] <= run["p99_ms"]
        assert set(run["cores_used"]) >= {"api", "redis", "worker", "client", "other", "machine"}
    overhead = results["overhead"]
    assert overhead["direct_median_s"] > 0 and overhead["service_median_s"] > 0
    assert all(run["bytes"] > 0 for run in overhead["service_s"])
    assert overhead["direct_cpu_median_s"] > 0 and overhead["service_cpu_median_s"] > 0
    doc = (tmp_path / "benchmarks.md").read_text()
    assert f"## {bench.SECTION}" in doc and "GET /v1/videos/{id}" in doc
