"""benchmarks/reliability.py: JUnit XML -> the docs/reliability.md table (no pytest run here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reliability import build_rows, parse_junit, render

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.reliability.test_hostile_input"
  name="test_bad_image_multipart[truncated_png]" time="0.1"/>
<testcase classname="tests.reliability.test_hostile_input"
  name="test_bad_image_multipart[png_0x0]" time="0.1"/>
<testcase classname="tests.service.test_worker"
  name="test_worker_killed_mid_job_is_redelivered_and_completed[pool_process]" time="9">{failure}</testcase>
<testcase classname="tests.reliability.faults.test_redis_restart"
  name="test_redis_restart_with_jobs_queued_and_running[sigkill]" time="8">
<properties><property name="faults" value="3"/></properties></testcase>
<testcase classname="tests.reliability.test_schema"
  name="test_operation_matches_the_schema_and_never_5xx[GET /healthz-negative]" time="0">
<skipped message="no parameters"/></testcase>
</testsuite></testsuites>
"""
META = {
    "generated": "now",
    "machine": "test",
    "command": "python -m benchmarks.reliability",
    "fault_runs": 1,
    "reliability_seconds": 1.0,
    "fault_seconds": 9.0,
}


def _doc(tmp_path: Path, failure: str = "") -> str:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.format(failure=failure))
    cases = parse_junit(path)
    return render(build_rows(cases), cases, META)


def test_all_passed_means_nothing_lost(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    assert "**4 runs, 0 failed. Lost: nothing.**" in doc
    assert "`truncated_png`, `png_0x0` | 2 | 2/2 passed | nothing |" in doc
    assert "## Faults" in doc and "## Hostile input" in doc
    assert "(1 n/a)" in doc  # the skipped case is not counted as a run
    assert "| `sigkill` | 1 (3 faults) | 1/1 passed | nothing |" in doc  # faults injected per run
    assert "Not covered yet" not in doc
    assert "## Load test" in doc and "Not run yet" in doc


def test_the_load_section_comes_from_the_load_results(tmp_path: Path) -> None:
    from benchmarks.load import render_markdown

    report = {
        "meta": {"generated": "now", "machine": "test", "command": "python -m benchmarks.load"},
        "params": {
            "duration_s": 180,
            "submit_rate_per_s": 5,
            "poll_rate_per_s": 50,
            "workers": 1,
            "queue_cap": 16,
            "max_in_flight": 32,
            "job": {"size": "64x64", "num_frames": 9, "steps": 100},
        },
        "requests": {"submit_201": 180, "submit_429": 720, "status_200": 9000},
        "retry_after_values": {"5": 720},
        "jobs": {"accepted": 180, "completed": 180, "lost": 0},
        "max_queue_depth": 15,
        "latency_ms": {
            "submit_201": {"n": 180, "p50": 9.1, "p90": 12.0, "p99": 30.5, "max": 41.0},
            "submit_429": {"n": 720, "p50": 6.0, "p90": 8.0, "p99": 12.0, "max": 20.0},
            "status": {"n": 9000, "p50": 3.0, "p90": 6.0, "p99": 11.0, "max": 19.0},
        },
        "rss": {
            "api": {
                "start_mib": 97.4,
                "end_mib": 98.0,
                "growth_mib": 0.6,
                "growth_pct": 0.6,
                "peak_mib": 98.1,
            },
        },
        "checks": {"no_errors": True, "none_lost": True},
    }
    doc = "\n".join(render_markdown(report))
    assert "720 refused (429, Retry-After: 5 s)" in doc and "| 180 / 180 / 0 / 0 |" in doc
    assert "| status | 9000 | 3.0 | 6.0 | 11.0 | 19.0 |" in doc
    assert "| API (`hyv serve`: uvicorn) | 97.4 | 98.0 | +0.6 (+0.6%) | 98.1 |" in doc
    assert "**Checks: all passed.**" in doc


def test_a_failure_is_shown(tmp_path: Path) -> None:
    doc = _doc(tmp_path, '<failure message="job stuck in_progress">trace</failure>')
    assert "1 failed. Lost: SEE THE FAILURES BELOW" in doc
    assert "**1 FAILED**" in doc and "job stuck in_progress" in doc
