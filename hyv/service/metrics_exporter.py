"""Serve one container's multiprocess Prometheus metrics, and optionally run the worker under it.

    python -m hyv.service.metrics_exporter --port 9101 -- hyv worker --name gpu0    # supervise a worker
    python -m hyv.service.metrics_exporter --port 9101                              # sidecar: serve only

Why this exists: hyv/service/metrics.py uses prometheus-client's multiprocess mode, where each process
writes `{type}_{pid}.db` files under PROMETHEUS_MULTIPROC_DIR and the API's `/metrics` merges the
files of its own folder. That is right on one machine (`hyv serve`: one PID namespace, one folder),
but not across containers: two worker containers started the same way have the same PIDs, so a
folder shared between them would mix their files, and a worker on another machine cannot share
the API's folder at all. So in Docker and Kubernetes every container keeps its own folder, the
API's `/metrics` reports the API's counters (jobs cancelled while queued among them) and its own
process_* series plus the cluster state read from Redis (queue depth, workers ready/busy, GPU
memory, each worker's resident memory), and each worker container reports its own counters and
histograms (jobs finished, queue wait, stage and step times, time to first byte) through this
exporter on port 9101. Prometheus scrapes both kinds of target (deploy/prometheus/prometheus.yml).

With a command after `--`, the exporter clears stale files, starts the command with the same
PROMETHEUS_MULTIPROC_DIR, forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT to it (SIGTERM = Celery's warm
shutdown: the running job finishes) and exits with its exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from hyv.service.metrics import setup_metrics

DEFAULT_PORT = 9101
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m hyv.service.metrics_exporter",
        description="Serve PROMETHEUS_MULTIPROC_DIR's metrics; run the command after -- under it.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="Address to listen on (default 0.0.0.0).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}).")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="Multiprocess folder (default: $PROMETHEUS_MULTIPROC_DIR, which must then be set).",
    )
    args = parser.parse_args(argv)
    args.command = command
    if args.dir is None:
        current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not current:
            parser.error("set PROMETHEUS_MULTIPROC_DIR or pass --dir")
        args.dir = Path(current)
    return args


def clear_stale_files(directory: Path) -> int:
    """Remove the .db files of earlier runs (a restarted container reuses its folder)."""
    removed = 0
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def serve_metrics(directory: Path, host: str, port: int) -> object:
    """Start the HTTP server (a daemon thread) for the merged metrics of `directory`, plus this
    process's own process_* metrics: the exporter starts with its container, so a changed
    process_start_time_seconds is a restarted worker container (alert HyvWorkerRestarts)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    directory = setup_metrics(args.dir.resolve())  # exported: the child writes where we read
    if args.command:
        clear_stale_files(directory)
    serve_metrics(directory, args.host, args.port)
    print(
        f"metrics_exporter: serving {directory} on http://{args.host}:{args.port}/metrics",
        file=sys.stderr,
        flush=True,
    )
    if not args.command:
        stop = threading.Event()
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        return 0

    child = subprocess.Popen(args.command)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
            continue
    return code if code >= 0 else 128 - code


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
