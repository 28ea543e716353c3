"""benchmarks/reliability.py: JUnit XML -> the docs/reliability.md table (no pytest run here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reliability import build_rows, parse_junit, render

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.reliability.test_hostile_input"
  name="test_bad_image_multipart[truncated_png]" time="0.1"/>
<testcase classname="tests.reliability.test_hostile_input"
  name="test_bad_image_multipart[png_0x0]" time="0.1"/>
<testcase classname="tests.service.test_worker"
  name="test_worker_killed_mid_job_is_redelivered_and_completed[pool_process]" time="9">{failure}</testcase>
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
    assert "**3 runs, 0 failed. Lost: nothing.**" in doc
    assert "`truncated_png`, `png_0x0` | 2 | 2/2 passed | nothing |" in doc
    assert "## Faults" in doc and "## Hostile input" in doc
    assert "(1 n/a)" in doc  # the skipped case is not counted as a run
    assert "## Not covered yet" in doc


def test_a_failure_is_shown(tmp_path: Path) -> None:
    doc = _doc(tmp_path, '<failure message="job stuck in_progress">trace</failure>')
    assert "1 failed. Lost: SEE THE FAILURES BELOW" in doc
    assert "**1 FAILED**" in doc and "job stuck in_progress" in doc
