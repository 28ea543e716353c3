"""`hyv serve` as a subprocess, the way `make serve` runs it, for tests that need the whole
single-machine deployment (its own Redis, workers and API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SERVE_CODE = "import typer; from hyv.cli import serve; typer.run(serve)"


def start_hyv_serve(
    data_dir: Path, bundle: Path, port: int, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`hyv serve --port --data-dir --weights` in its own session (like a terminal's foreground job),
    its output appended to `log`. The test environment's HYV_* settings are dropped (the service
    reads only what the test passes in `env`, on top of CPU, fp32 and fast heartbeats and leases)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HYV_")}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve uses data_dir/metrics
    environment.update(
        HYV_DEVICE="cpu", HYV_DTYPE="fp32", HYV_WORKER_HEARTBEAT_SECONDS="0.25", HYV_JOB_LEASE_SECONDS="1.5"
    )
    environment.update(env)
    command = [
        sys.executable,
        "-c",
        SERVE_CODE,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--weights",
        str(bundle),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
