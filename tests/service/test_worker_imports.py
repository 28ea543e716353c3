"""The worker process never imports the API package (FastAPI, Starlette): it loads only what its
task needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

# What `celery -A hyv.service.celery_app:celery_app worker` imports: the app, the modules it
# `include`s (the task), then, in each pool process, what worker_process_init builds (the
# process's runtime, without loading the model) and what a job's end sends (its webhook event).
WORKER_IMPORTS = """
import sys
from hyv.service.celery_app import celery_app as app
app.loader.import_default_modules()
assert "hyv.service.worker" in sys.modules, sorted(app.conf.include)
from hyv.service import webhooks, worker
from hyv.service.job_model import Job
from hyv.service.settings import get_settings
worker.WorkerProcess(get_settings())
webhooks.job_event(Job(model="hyv-tiny", request={"prompt": "x"}, prompt="x"))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")))
"""


def test_the_worker_process_never_imports_the_api(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HYV_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: no import may need Redis
        "HYV_DATA_DIR": str(tmp_path),
    }
    command = [sys.executable, "-c", WORKER_IMPORTS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
