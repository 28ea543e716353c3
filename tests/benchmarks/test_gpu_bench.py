"""benchmarks/gpu.py: the sizes, FLOP counts and model mapping it relies on, and its CPU smoke run
(every stage's code at tiny sizes, in a subprocess, as `python -m benchmarks.gpu --smoke`)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import gpu
from benchmarks.gpu_dit import VideoSize, dit_flops, parse_size
from benchmarks.gpu_report import SECTION
from benchmarks.kernels import CASES
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import dit_preset
from hyv.models.dit_loading import diffusers_config, official_to_diffusers_state_dict

ROOT = Path(__file__).resolve().parents[2]
THIRTEEN_B = dit_preset("hunyuan-video-13b")


def test_sizes_match_the_vae_and_the_issue() -> None:
    assert parse_size("544x960x129").latent_shape() == (33, 68, 120)
    assert parse_size("720x1280x129").latent_shape() == (33, 90, 160)
    assert parse_size("720x1280x129").video_tokens(THIRTEEN_B) == 118_800
    for bad, named in [
        ("720x1280", "720x1280"),
        ("720x1280x128", "frames=128"),
        ("721x1280x129", "721x1280"),
        ("axbxc", "axbxc"),
    ]:
        with pytest.raises(ValueError, match=named):
            parse_size(bad)


def test_dit_flops_give_the_issues_floor() -> None:
    # Issue 21: 720x1280x129 on one H100 has a FLOP floor of 12.2 s at 989 TFLOP/s.
    flops = dit_flops(THIRTEEN_B, 118_800, 256)
    assert round(flops / 989e12, 1) == 12.2
    # Attention is quadratic, the linears linear: doubling the tokens more than doubles the FLOPs.
    assert dit_flops(THIRTEEN_B, 2 * 118_800, 256) > 2 * flops


@pytest.mark.parametrize("preset", ["tiny", "small", "hunyuan-video-13b", "hunyuan-video-i2v-13b"])
def test_diffusers_kwargs_build_the_same_tensors(preset: str) -> None:
    """The diffusers model built from our config holds exactly our weights under its names."""
    from diffusers import HunyuanVideoTransformer3DModel

    config = dit_preset(preset)
    with torch.device("meta"):
        ours = HunyuanVideoDiT(config)
        theirs: Any = HunyuanVideoTransformer3DModel(**diffusers_config(config))
    mapped = official_to_diffusers_state_dict(ours.state_dict(), config)
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected


def test_budget_deadlines_accumulate_shares() -> None:
    budget = gpu.Budget(100.0, ["tests", "dit"])
    share = gpu.SHARES["tests"] / (gpu.SHARES["tests"] + gpu.SHARES["dit"])
    assert budget.deadlines["tests"] - budget.start == pytest.approx(100.0 * share)
    assert budget.deadlines["dit"] - budget.start == pytest.approx(100.0)


def test_only_rejects_unknown_stages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(["--only", "dit,warp"])
    assert "warp" in capsys.readouterr().err


def _numbers(node: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _numbers(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _numbers(value, f"{path}[{i}]")]
    if isinstance(node, int | float) and not isinstance(node, bool):
        return [(path, float(node))]
    return []


def _positive(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert key in row, (key, row)
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_run(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / "docs/benchmarks.md", doc)
    committed = (ROOT / "docs/benchmarks.md").read_text()
    out = tmp_path / "gpu.json"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--results", str(out), "--doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["mode"] == "smoke" and result["preset"] == "tiny"
    assert result["machine"]["device_name"] == "cpu"
    assert 0 < result["wall_s"] < wall
    assert list(result["stages"]) == list(gpu.STAGES)
    for path, value in _numbers(result):
        assert math.isfinite(value), path
        assert value >= 0, path
    fp8_present = importlib.util.find_spec("hyv.models.fp8") is not None
    for name, stage in result["stages"].items():
        expected = "skipped" if name == "fp8" and not fp8_present else "ok"
        assert stage["status"] == expected, (name, stage)
        assert stage["seconds"] > 0

    tests = result["stages"]["tests"]
    assert tests["returncode"] == 0 and tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0

    kernel_rows = result["stages"]["kernels"]["rows"]
    assert {r["op"] for r in kernel_rows if r["variant"] == "reference"} == set(CASES)
    for row in kernel_rows:
        _positive(row, "fwd_ms", "fwdbwd_ms", "fwd_gbps", "fwdbwd_gbps")

    (sdpa,) = [r for r in result["stages"]["attention"]["rows"] if r["backend"] == "sdpa"]
    _positive(sdpa, "fwd_ms", "tflops")

    dit = result["stages"]["dit"]
    assert dit["params"]["ours"] == dit["params"]["diffusers"] > 0
    sizes = [VideoSize(128, 128, 9).label, VideoSize(128, 192, 9).label]
    assert sorted((r["size"], r["model"]) for r in dit["runs"]) == sorted(
        (s, m) for s in sizes for m in ("ours", "diffusers")
    )
    for row in dit["runs"]:
        _positive(row, "step_s", "warmup_s", "build_s", "flops", "tflops")
        assert len(row["steps_s"]) >= 1

    (sp,) = result["stages"]["sp"]["runs"]
    assert (sp["world_size"], sp["ulysses_degree"] * sp["ring_degree"]) == (2, 2)
    _positive(sp, "step_s", "speedup")

    if fp8_present:
        fp8 = result["stages"]["fp8"]
        assert fp8["linears_quantized"] > 0
        _positive(fp8["baseline"], "step_s")
        _positive(fp8["fp8"], "step_s")

    # the tiny preset measures none of the 13B targets, and says so instead of inventing numbers
    assert [t["measured"] for t in result["targets"]] == [None, None]

    text = doc.read_text()
    assert text.count(f"## {SECTION}") == 1
    section = text.split(f"## {SECTION}", 1)[1]
    assert "Device: **cpu**" in section and "not GPU numbers" in section
    assert "## Fused kernels (benchmarks/kernels.py)" in text  # the other sections stay
    assert (ROOT / "docs/benchmarks.md").read_text() == committed
