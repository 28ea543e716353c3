"""hyv/cli.py: the `hyv` command sits above every layer and imports a layer only when one of its
commands runs. `hyv --help` and the API container's `hyv serve --workers 0` must not import torch
(seconds of start-up and hundreds of MB in a process that never touches a model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hyv.service.launcher import RedisServer, free_port

HEAVY = "sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in HEAVY_HYV)"
HEAVY_HYV = ("hyv.models", "hyv.kernels", "hyv.engine.pipeline", "hyv.engine.bundle", "hyv.training")


def _run(code: str, timeout_s: float = 90) -> Any:
    prelude = f"import sys, json\nHEAVY_HYV = {HEAVY_HYV!r}\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_imports_no_layer() -> None:
    code = (
        "from hyv.cli import app\n"
        "try:\n    app(['--help'], prog_name='hyv')\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps({HEAVY}))\n"
    )
    assert _run(code) == []


def test_train_group_loads_training_only_when_asked() -> None:
    code = (
        "from hyv.cli import app\n"
        "try:\n    app(['train', '--help'], prog_name='hyv')\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'hyv.training.cli')))\n"
    )
    assert _run(code) == ["hyv.training.cli"]


@pytest.mark.slow
def test_api_only_serve_imports_no_torch(tmp_path: Path) -> None:
    """The real `hyv serve --workers 0` on a real Redis, serving requests, checked from inside."""
    port = free_port()
    with RedisServer(tmp_path / "redis") as redis_server:
        # The server runs in the main thread (it installs signal handlers); a thread asks it for
        # /v1/models, then reports what the process has imported and ends it.
        code = (
            "import threading, time, urllib.request, os\n"
            "from hyv.cli import app\n"
            "def check():\n"
            "    deadline = time.monotonic() + 60\n"
            "    while True:\n"
            "        try:\n"
            f"            url = 'http://127.0.0.1:{port}/v1/models'\n"
            "            body = urllib.request.urlopen(url, timeout=2).read()\n"
            "            break\n"
            "        except OSError:\n"
            "            if time.monotonic() > deadline:\n"
            "                print('the API did not come up', file=sys.stderr, flush=True)\n"
            "                os._exit(3)\n"
            "            time.sleep(0.2)\n"
            "    print(json.dumps({'models': json.loads(body), 'heavy': " + HEAVY + "}), flush=True)\n"
            "    os._exit(0)\n"
            "threading.Thread(target=check, daemon=True).start()\n"
            f"app(['serve', '--workers', '0', '--redis-url', {redis_server.url!r}, '--port', '{port}',\n"
            f"     '--data-dir', {str(tmp_path / 'data')!r}], prog_name='hyv')\n"
        )
        report = _run(code)
        assert report["heavy"] == []
        assert [model["id"] for model in report["models"]["data"]] == ["hyv-small"]
