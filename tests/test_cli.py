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


# --- one-line errors ------------------------------------------------------------------------------

HYV = str(Path(sys.executable).with_name("hyv"))  # the installed console command


def _hyv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HYV, *args], capture_output=True, text=True, timeout=120, check=False)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [expected], output
    assert "Traceback" not in output and "pydantic" not in output.lower() and "http" not in output


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--frames", "-5", "error: --frames must be >= 1 and <= 1024, got -5"),
        ("--steps", "0", "error: --steps must be >= 1 and <= 1000, got 0"),
        ("--fps", "500", "error: --fps must be >= 1 and <= 120, got 500"),
        ("--guidance", "-1", "error: --guidance must be >= 0.0 and <= 100.0, got -1.0"),
        ("--width", "8", "error: --width must be >= 16 and <= 4096, got 8"),
        ("--seed", "-1", "error: --seed must be >= 0 and < 9223372036854775808, got -1"),
    ],
)
def test_generate_names_the_option_out_of_range(
    tiny_bundle_dir: Path, tmp_path: Path, option: str, value: str, expected: str
) -> None:
    out = tmp_path / "video.mp4"
    result = _hyv(
        "generate", "a red circle", "--weights", str(tiny_bundle_dir), "-o", str(out), option, value
    )
    _assert_one_line_error(result, expected)
    assert not out.exists()


def _no_cuda() -> str:
    """What the CLI says this machine has instead (the test needs a machine without CUDA)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    assert torch.version.cuda is None, "a CUDA build without a GPU says 'no CUDA GPU is visible'"
    return f"CUDA is not available: this torch ({torch.__version__}) is built without CUDA; available: cpu"


def test_generate_on_cuda_without_cuda_says_so_in_one_line(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    reason = _no_cuda()
    out = tmp_path / "video.mp4"
    result = _hyv(
        "generate", "a red circle", "--weights", str(tiny_bundle_dir), "-o", str(out), "--device", "cuda"
    )
    _assert_one_line_error(result, f"error: --device cuda: {reason}")
    assert not out.exists()


def test_worker_on_cuda_without_cuda_says_so_in_one_line(tiny_bundle_dir: Path) -> None:
    """Refused before it connects anywhere (the Redis named here does not exist)."""
    reason = _no_cuda()
    result = _hyv(
        "worker",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--weights",
        str(tiny_bundle_dir),
        "--device",
        "cuda",
    )
    _assert_one_line_error(result, f"error: --device cuda: {reason}")


def test_a_setting_out_of_range_names_its_option() -> None:
    _assert_one_line_error(
        _hyv("serve", "--port", "70000"), "error: --port must be >= 0 and <= 65535, got 70000"
    )


def test_worker_models_errors_name_the_model_in_one_line(tiny_bundle_dir: Path) -> None:
    """Refused before it connects anywhere: a model no served entry names, a worker group asked
    to hold two models."""
    from hyv.engine.bundle_spec import bundled_model_names

    worker = ("worker", "--redis-url", "redis://127.0.0.1:1/0", "--device", "cpu")
    bundled = ", ".join(bundled_model_names())  # hyv-small, and its teacher once exported
    _assert_one_line_error(
        _hyv(*worker, "--models", "no-such-model"),
        f"error: models entry 'no-such-model' is not a bundled model ({bundled}); give a path "
        "(./no-such-model) or NAME=PATH",
    )
    _assert_one_line_error(
        _hyv(*worker, "--models", f"a={tiny_bundle_dir},b={tiny_bundle_dir}", "--sp", "2"),
        "error: a worker group (--sp 2) serves one model, not ['a', 'b']: run one group per model "
        "(hyv worker --models NAME)",
    )
