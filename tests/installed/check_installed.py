"""The installed product, tested from a folder outside the checkout (tests/installed/run.py copies
this file away and runs it with a virtualenv holding the built wheel, not an editable install).

It checks what a user gets after `pip install hyvideo-serve[text-encoders] transformers diffusers`:
one top-level import name that leaves Hugging Face's `kernels` alone, every module importable,
`hyv generate` with its defaults, one job through `hyv serve` with the OpenAI SDK, and the two
layouts of the official HunyuanVideo release served as they are downloaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import make_release_fixtures  # copied beside this file by run.py
import numpy as np
import openai
import pytest

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the SDK marks its Videos API deprecated
]

CHECKOUT = Path(os.environ.get("HYV_TEST_CHECKOUT", "/nonexistent"))
PROMPT = "a red circle moving right on a black background"


def read_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def hyv(*args: str, cwd: Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["hyv", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, f"hyv {' '.join(args)}:\n{result.stderr[-4000:]}"
    return result


# --- the distribution ------------------------------------------------------------------------


def test_the_wheel_installs_one_top_level_name() -> None:
    dist = importlib.metadata.distribution("hyvideo-serve")
    files = dist.files or []
    tops = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert tops == {"hyv"}, sorted(tops)
    assert any(str(f).startswith("hyv/bundled/hyv-small/") for f in files), "the bundled model ships"
    if (CHECKOUT / "weights" / "hyv-small-teacher" / "bundle.json").is_file():  # its teacher beside it
        teacher = {str(f) for f in files if str(f).startswith("hyv/bundled/hyv-small-teacher/")}
        assert {f"hyv/bundled/hyv-small-teacher/{c}/model.safetensors" for c in ("dit", "vae")} <= teacher
    scripts = [str(f) for f in files if f.parts[0] == ".."]
    assert any(s.endswith("bin/hyv") for s in scripts), scripts


def test_hyv_is_the_installed_copy_not_the_checkout() -> None:
    import hyv

    location = Path(hyv.__file__).resolve()
    assert "site-packages" in location.parts, location
    assert CHECKOUT not in location.parents
    assert Path.cwd().resolve() != CHECKOUT and CHECKOUT not in Path.cwd().resolve().parents


def test_hugging_face_kernels_keeps_its_name() -> None:
    import kernels  # Hugging Face's package, which transformers >= 5 requires

    assert Path(kernels.__file__).resolve().parent.name == "kernels"
    assert hasattr(kernels, "get_kernel"), kernels.__file__
    import transformers

    from hyv.kernels import rms_norm

    assert transformers.LlamaModel is not None and callable(rms_norm)


def test_every_module_imports() -> None:
    import hyv

    names = [m.name for m in pkgutil.walk_packages(hyv.__path__, "hyv.") if m.name != "hyv.__main__"]
    assert len(names) > 80 and "hyv.service.api.app" in names and "hyv.training.recipe" in names
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_help_answers(tmp_path: Path) -> None:
    out = hyv("--help", cwd=tmp_path).stdout
    for command in ("generate", "serve", "worker", "convert", "train"):
        assert command in out


# --- hyv generate ----------------------------------------------------------------------------


def test_generate_with_the_defaults(tmp_path: Path) -> None:
    result = hyv("generate", PROMPT, "--out", "video.mp4", "--seed", "0", cwd=tmp_path)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["path"] == "video.mp4"
    frames = read_frames(tmp_path / "video.mp4")
    assert frames.shape == (17, 64, 64, 3)
    assert 5 < frames.mean() < 250, "a picture, not a blank frame"


def test_generate_with_fp8_weights_and_memory_options(tmp_path: Path) -> None:
    """The options a small GPU needs, from the installed package: the same video within FP8's error."""
    hyv("generate", PROMPT, "--out", "plain.mp4", "--seed", "0", cwd=tmp_path)
    options = ["--dit-dtype", "fp8", "--model-offload", "--text-encoder-placement", "cpu"]
    hyv("generate", PROMPT, "--out", "fp8.mp4", "--seed", "0", *options, cwd=tmp_path)
    plain = read_frames(tmp_path / "plain.mp4").astype(float)
    fp8 = read_frames(tmp_path / "fp8.mp4").astype(float)
    assert plain.shape == fp8.shape == (17, 64, 64, 3)
    mse = float(((plain - fp8) ** 2).mean())
    assert 10 * math.log10(255**2 / max(mse, 1e-12)) > 30.0, mse  # docs/models.md: ~37-40 dB measured


# --- hyv serve + the OpenAI SDK --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Starts `hyv serve [ARGS]` (its own Redis and one worker) and gives its base URL once ready."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        port = _free_port()
        log = (tmp_path / f"serve-{port}.log").open("wb")
        env = {**os.environ, "HYV_DEVICE": "cpu", "HYV_DTYPE": "fp32"}
        process = subprocess.Popen(
            ["hyv", "serve", "--port", str(port), "--data-dir", str(tmp_path / f"data-{port}"), *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / f"serve-{port}.log").read_text()[-4000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / f"serve-{port}.log").read_text()[-4000:]
            time.sleep(0.5)

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _one_job(base: str, target: Path, **request: Any) -> Any:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="unused-without-keys") as client:
        video = client.videos.create_and_poll(poll_interval_ms=250, **request)
        assert video.status == "completed", video
        client.videos.download_content(video.id).write_to_file(target)
        return video


def test_serve_one_job_with_the_sdk(serve: Any, tmp_path: Path) -> None:
    base = serve()
    video = _one_job(base, tmp_path / "served.mp4", prompt=PROMPT, model="hyv-small", extra_body={"seed": 0})
    assert video.model == "hyv-small"
    assert read_frames(tmp_path / "served.mp4").shape == (17, 64, 64, 3)


def test_serve_a_worker_group_with_the_sdk(serve: Any, tmp_path: Path) -> None:
    """`hyv serve --sp 2`: the worker is two processes in one gloo group (the follower started as
    `python -m hyv.service.group_follower` from the installed package)."""
    base = serve("--sp", "2")
    video = _one_job(base, tmp_path / "group.mp4", prompt=PROMPT, extra_body={"seed": 0})
    assert video.model == "hyv-small"
    frames = read_frames(tmp_path / "group.mp4")
    assert frames.shape == (17, 64, 64, 3) and 5 < frames.mean() < 250


# --- the official release, as downloaded -----------------------------------------------------

RELEASES = {
    "official": make_release_fixtures.write_official_release,
    "diffusers": make_release_fixtures.write_diffusers_release,
}
# The 13B's spec serves only its resolution buckets: 720x720 is the smallest; few frames and steps.
RELEASE_REQUEST: dict[str, Any] = {"size": "720x720", "num_frames": 5, "steps": 2}


@pytest.mark.parametrize("layout", sorted(RELEASES))
def test_release_folder_serves_a_job(layout: str, serve: Any, tmp_path: Path) -> None:
    folder = RELEASES[layout](tmp_path / layout)
    base = serve("--weights", str(folder))
    target = tmp_path / f"{layout}.mp4"
    _one_job(base, target, prompt=PROMPT, extra_body={"seed": 3, **RELEASE_REQUEST})
    frames = read_frames(target)
    assert frames.shape[0] == RELEASE_REQUEST["num_frames"], frames.shape


@pytest.mark.parametrize("layout", sorted(RELEASES))
def test_converted_release_makes_the_same_video(layout: str, tmp_path: Path) -> None:
    folder = RELEASES[layout](tmp_path / layout)
    hyv("convert", str(folder), str(tmp_path / "bundle"), "--dtype", "fp32", cwd=tmp_path)
    width, height = (str(v) for v in RELEASE_REQUEST["size"].split("x"))
    options = ["--width", width, "--height", height, "--frames", "1"]
    options += ["--steps", str(RELEASE_REQUEST["steps"]), "--seed", "5", "--device", "cpu", "--dtype", "fp32"]
    hyv("generate", PROMPT, "--weights", str(folder), "--out", "direct.mp4", *options, cwd=tmp_path)
    hyv(
        "generate",
        PROMPT,
        "--weights",
        str(tmp_path / "bundle"),
        "--out",
        "converted.mp4",
        *options,
        cwd=tmp_path,
    )
    direct, converted = read_frames(tmp_path / "direct.mp4"), read_frames(tmp_path / "converted.mp4")
    assert direct.shape == converted.shape
    assert np.abs(direct.astype(int) - converted.astype(int)).max() <= 2
