"""Reliability report: runs the hostile-input, auth and schema tests (tests/reliability/) and the
fault-injection tests (tests/reliability/faults/: Redis restarted, plain and TLS, the API restarted
mid-stream, storage full, out of memory, a model that does not load, SIGTERM;
tests/service/test_worker.py: SIGKILL mid-job, the visibility-timeout trap;
tests/service/test_broker.py: an ack while TLS Redis is down), each fault test several times, with
pytest's JUnit XML output, and regenerates docs/reliability.md: every fault and attack tried, how
many times, the outcome, and what was lost (it must be nothing). The latest load test
(benchmarks/load.py -> benchmarks/results/load.json) is summarized at the end.

    python -m benchmarks.reliability [--fault-runs 3] [--skip-faults] [--out docs/reliability.md]
    python -m benchmarks.reliability --from-results   # no tests: render again from the last results

Each pytest run is niced and single-threaded (OMP_NUM_THREADS=1): the machine is shared. Exits
non-zero when any test failed (the document is still written, saying so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.reliability_catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
LOAD_RESULTS = ROOT / "benchmarks" / "results" / "load.json"
FAULTS_DIR = "tests/reliability/faults"
FAULT_TESTS = (
    "tests/service/test_worker.py::test_job_longer_than_visibility_timeout_runs_once",
    "tests/service/test_worker.py::test_worker_killed_mid_job_is_redelivered_and_completed",
    "tests/service/test_worker_group.py::test_a_failed_rank_requeues_the_job_once_and_the_restarted_group_finishes_it",
    "tests/service/test_broker.py::test_an_ack_that_fails_while_tls_redis_is_down_frees_the_prefetch_slot",
    FAULTS_DIR,
)
RELIABILITY_TESTS = "tests/reliability"
# Not attacks: this script's own unit test, and the load script's short run (the load test itself
# is benchmarks/load.py, summarized from its results). The faults run separately, several times.
NOT_IN_THE_FIRST_RUN = (
    "tests/reliability/test_report_script.py",
    "tests/reliability/test_load_script.py",
    FAULTS_DIR,
)


@dataclass
class Case:
    function: str
    variant: str
    file: str
    outcome: str  # passed, failed, error, skipped
    seconds: float
    message: str = ""
    faults: int = 0  # faults injected in this run (the test's `faults` property), 0 = not counted


@dataclass
class Row:
    section: str
    function: str
    tried: str
    lost_means: str
    variants: list[str] = field(default_factory=list)
    runs: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    faults: int = 0


def run_pytest(targets: list[str], junit: Path, extra: list[str] | None = None) -> tuple[int, float]:
    command = [
        "nice", "-n", "15", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        f"--junitxml={junit}", *targets, *(extra or []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print("+", " ".join(command[3:]), flush=True)
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    return result.returncode, time.monotonic() - start


def parse_junit(path: Path) -> list[Case]:
    cases = []
    for testcase in ET.parse(path).getroot().iter("testcase"):
        name = testcase.get("name", "")
        match = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", name, re.DOTALL)
        function, variant = (match.group(1), match.group(2) or "") if match else (name, "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = testcase.find(tag)
            if child is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (child.get("message") or "")[:300]
                break
        faults = sum(
            int(prop.get("value") or 0)
            for prop in testcase.iter("property")
            if prop.get("name") == "faults" and (prop.get("value") or "").isdigit()
        )
        cases.append(
            Case(
                function,
                variant,
                testcase.get("classname", ""),
                outcome,
                float(testcase.get("time", 0)),
                message,
                faults if outcome == "passed" else 0,
            )
        )
    return cases


def build_rows(cases: list[Case]) -> list[Row]:
    rows: dict[str, Row] = {}
    for case in cases:
        section, tried, lost = CATALOGUE.get(case.function, ("Other", case.function, "-"))
        row = rows.setdefault(case.function, Row(section, case.function, tried, lost))
        if case.variant and case.variant not in row.variants:
            row.variants.append(case.variant)
        row.seconds += case.seconds
        if case.outcome == "skipped":
            row.skipped += 1
            continue
        row.runs += 1
        row.faults += case.faults
        if case.outcome == "passed":
            row.passed += 1
        else:
            row.failed += 1
    order = {name: index for index, name in enumerate(CATALOGUE)}
    return sorted(rows.values(), key=lambda r: (order.get(r.function, len(order)), r.function))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    rows: list[Row], cases: list[Case], meta: dict[str, object], load: dict[str, Any] | None = None
) -> str:
    failed = [c for c in cases if c.outcome in ("failed", "error")]
    total_runs = sum(r.runs for r in rows)
    lines = [
        "# Reliability and security",
        "",
        "<!-- Generated by `python -m benchmarks.reliability`; do not edit by hand. -->",
        "",
        "Every fault and attack below was run against real processes: a real `redis-server`, real "
        "Celery worker processes on the tiny model bundle, and the API served by uvicorn (or, for "
        "schemathesis, the ASGI app in process on a real Redis). A hostile-input case passes when the "
        'answer is a clear 4xx in the error schema `{"error": {"code", "message", "param", '
        '"type"}}` (or, for odd but valid input, a 201), never a 5xx, **and** a valid submission '
        "and status read still work afterwards on the same server, which served every attack of its "
        "module in turn. A fault case passes when every job it submitted ended as it must: completed "
        "once with a valid MP4 of the frames asked for, never run by two workers at the same time "
        "(a run may overlap the next only if its process was killed, or it had lost its claim and "
        "stopped at its next step without publishing), or, for storage full and out of memory, "
        "failed with its clear error code while the same worker process went on to complete the "
        "next job. Each fault test injects its fault several times per run (the faults count).",
        "",
        f"- Generated: {meta['generated']} on {meta['machine']}",
        f"- Command: `{meta['command']}`",
        f"- Fault tests repeated {meta['fault_runs']} times; wall time: reliability tests "
        f"{meta['reliability_seconds']:.0f} s, fault tests {meta['fault_seconds']:.0f} s",
        f"- **{total_runs} runs, {len(failed)} failed. Lost: "
        f"{'nothing' if not failed else 'SEE THE FAILURES BELOW'}.**",
        "",
    ]
    for section in dict.fromkeys(r.section for r in rows):
        lines += [
            f"## {section}",
            "",
            "| Fault / attack | Variants | Runs | Outcome | Lost |",
            "|---|---|---:|---|---|",
        ]
        for row in (r for r in rows if r.section == section):
            outcome = f"{row.passed}/{row.runs} passed" if not row.failed else f"**{row.failed} FAILED**"
            if row.skipped:
                outcome += f" ({row.skipped} n/a)"
            lost = "nothing" if not row.failed else f"**see failures** ({row.lost_means})"
            variants = ", ".join(f"`{v}`" for v in row.variants) if row.variants else "-"
            runs = f"{row.runs} ({row.faults} faults)" if row.faults else str(row.runs)
            lines.append(
                f"| {_cell(row.tried)} <br>`{row.function}` | {_cell(variants)} | {runs} | "
                f"{outcome} | {lost} |"
            )
        lines.append("")
    if failed:
        lines += ["## Failures", ""]
        lines += [f"- `{c.function}[{c.variant}]`: {_cell(c.message)}" for c in failed]
        lines.append("")
    lines += [
        "## Fixes these tests led to",
        "",
        "- A JSON body nested 100000 deep made `json.loads` raise RecursionError: a 500. Now a 422 "
        "`invalid_json` (hyv/service/api/body.py).",
        "- Every malformed multipart body was a 400 `http_error` (Starlette turns its "
        "MultiPartException into an HTTPException inside an app, so our handler never ran), and a "
        "field over 64 KB (a 1 MB prompt) the same. Now a 422 `invalid_multipart`, or a 413 "
        "`field_too_large` (hyv/service/api/body.py).",
        "- The OpenAPI document said every route needs a key and that /metrics returns JSON: "
        "/healthz, /readyz and /metrics are now documented as public, /metrics as text/plain "
        "(hyv/service/api/routes_system.py).",
        "- `repr(Settings)` showed the API keys and the webhook secret; both are hidden now "
        "(hyv/service/settings.py).",
        *FAULT_FIXES,
        "",
        *render_load(load),
    ]
    return "\n".join(lines)


FAULT_FIXES = [
    "- A job that ended while Redis was restarting left its worker idle for good: kombu's Redis "
    "transport frees the worker's only prefetch slot only once Redis confirms the acknowledgement, "
    "and all the worker logged was `Couldn't ack`. The workers now use a transport that frees the "
    "slot whatever Redis answers (hyv/service/broker.py).",
    "- A Redis restart made every running job raise at its next progress write: it failed with "
    "`internal_error` if Redis was back in time for that write, else it was rerun from the start "
    "once its claim lapsed. The worker's Redis client now retries for up to 30 s, so the job pauses "
    "and goes on; a job that still cannot reach Redis is left to the claim reaper (requeued), never "
    "marked failed for Redis' sake (hyv/service/worker_health.py).",
    "- A worker whose model did not load took jobs anyway: the task raised (the load was retried "
    "in it), Celery acknowledged the message, and the job stayed `queued` with no message left to "
    "run it. Now the worker stays "
    "up but not ready, hands every delivery back to the queue, retries the load every minute, and "
    "/readyz answers 503 with its load error (hyv/service/worker.py, hyv/service/api/routes_system.py).",
    "- A full disk failed a job with `internal_error` and a message naming the server's paths, or "
    "(a file-size limit) with a TypeError from prometheus-client, which could not create its "
    "metric files: the job failed for the metrics' sake. Disk errors (ENOSPC, EFBIG, EDQUOT, EROFS, "
    "EACCES, EIO) are `storage_error` now, and recording a metric never raises "
    "(hyv/service/worker_health.py, hyv/service/metrics.py).",
    "- Out of memory was recognised only as CUDA's error; on the CPU it was `internal_error`, and "
    "libx264 failing to open for lack of memory too. `job_memory_limit_mb` (new) bounds a job; "
    "torch's CPU and CUDA OOM, MemoryError, and any error raised at the limit are `out_of_memory`, "
    "and the memory is released (gc, CUDA cache, malloc_trim) before the next job.",
]


def render_load(load: dict[str, Any] | None) -> list[str]:
    """The load test section, from benchmarks/results/load.json (benchmarks/load.py)."""
    if load is None:
        return ["## Load test", "", "Not run yet: `python -m benchmarks.load`.", ""]
    from benchmarks.load import render_markdown

    return render_markdown(load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fault-runs", type=int, default=3, help="how many times to run each fault test")
    parser.add_argument("--skip-faults", action="store_true", help="only the tests/reliability tests")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="run nothing: render the document again from the last --results (and the load results)",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        saved = json.loads(args.results.read_text())
        saved_cases = [Case(**case) for case in saved["cases"]]
        saved_load = json.loads(LOAD_RESULTS.read_text()) if LOAD_RESULTS.exists() else None
        args.out.write_text(render(build_rows(saved_cases), saved_cases, saved["meta"], saved_load))
        print(f"wrote {args.out} from {args.results}")
        return 0

    cases: list[Case] = []
    codes = []
    with tempfile.TemporaryDirectory(prefix="hyv-reliability-") as tmp:
        code, reliability_seconds = run_pytest(
            [RELIABILITY_TESTS],
            Path(tmp) / "reliability.xml",
            [f"--ignore={path}" for path in NOT_IN_THE_FIRST_RUN],
        )
        codes.append(code)
        cases += parse_junit(Path(tmp) / "reliability.xml")
        fault_seconds = 0.0
        runs = 0 if args.skip_faults else args.fault_runs
        for index in range(runs):
            junit = Path(tmp) / f"faults-{index}.xml"
            code, seconds = run_pytest(list(FAULT_TESTS), junit)
            codes.append(code)
            fault_seconds += seconds
            cases += parse_junit(junit)

    command = "python -m benchmarks.reliability" + (
        f" --fault-runs {args.fault_runs}" if runs else " --skip-faults"
    )
    meta: dict[str, object] = {
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": command,
        "fault_runs": runs,
        "reliability_seconds": reliability_seconds,
        "fault_seconds": fault_seconds,
    }
    rows = build_rows(cases)
    load = json.loads(LOAD_RESULTS.read_text()) if LOAD_RESULTS.exists() else None
    args.out.write_text(render(rows, cases, meta, load))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in rows], "cases": [asdict(c) for c in cases]}, indent=1
        )
    )
    failed = sum(r.failed for r in rows)
    print(f"{sum(r.runs for r in rows)} runs, {failed} failed; wrote {args.out} and {args.results}")
    return 0 if failed == 0 and all(c in (0, 5) for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
