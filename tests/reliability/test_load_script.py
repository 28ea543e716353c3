"""benchmarks/load.py end to end, briefly: a real `hyv serve` under a few seconds of load with a small
queued-job cap. The full run (minutes) is `python -m benchmarks.load`; its results are in
docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_short_load_run_passes_its_checks(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "benchmarks.load", "--duration", "8", "--queue-cap", "3"]
    command += ["--submit-rate", "6", "--poll-rate", "30", "--sample-every", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and all(report["checks"].values()), report["checks"]
    assert report["requests"]["submit_429"] > 0 and report["retry_after_values"]
    assert report["jobs"]["lost"] == 0 and report["jobs"]["completed"] == report["jobs"]["accepted"] > 0
    assert report["max_queue_depth"] <= 3
    assert {"api", "redis", "worker1", "worker1_pool1"} <= set(report["rss"])
    assert report["latency_ms"]["status"]["n"] > 0
