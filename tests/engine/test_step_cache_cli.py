"""`hyv generate --cache/--cache-threshold` and `hyv calibrate-cache` through the real command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyv.cli import app
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, read_bundle_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle")
    result = runner.invoke(app, ["init-weights", "--preset", "tiny", "--out", str(path), "--force"])
    assert result.exit_code == 0, result.output
    return path


def _generate(bundle: Path, out: Path, *extra: str) -> object:
    args = ["generate", "a red circle moving left on a black background", "--weights", str(bundle)]
    args += ["--out", str(out), "--width", "32", "--height", "32", "--frames", "5", "--steps", "6", *extra]
    return runner.invoke(app, args)


def test_generate_with_a_cache_reports_its_skips(tiny: Path, tmp_path: Path) -> None:
    result = _generate(tiny, tmp_path / "a.mp4", "--cache", "teacache", "--cache-threshold", "10")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["cache"] == {"mode": "teacache", "threshold": 10.0, "computed": 2, "skipped": 4}
    result = _generate(tiny, tmp_path / "b.mp4")
    assert json.loads(result.stdout.strip().splitlines()[-1])["cache"]["skipped"] == 0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--cache", "fast"], "'fast'"),
        (["--cache", "first_block", "--cache-threshold", "-1"], "greater than 0"),
        (["--cache-threshold", "0.1"], "not 'off'"),
    ],
)
def test_bad_cache_options_are_refused_naming_them(
    tiny: Path, tmp_path: Path, extra: list[str], fragment: str
) -> None:
    result = _generate(tiny, tmp_path / "c.mp4", *extra)
    assert result.exit_code == 2
    assert "--cache" in result.output and fragment in result.output
    assert not (tmp_path / "c.mp4").exists()


def test_calibrate_cache_stores_the_fit_in_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    args = ["calibrate-cache", "--weights", str(bundle), "--prompts", "2", "--steps", "5", "--true-cfg"]
    dry = runner.invoke(app, [*args, "--no-write"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout.strip().splitlines()[-1])["written"] is None
    assert read_bundle_spec(bundle).step_cache_coefficients is None
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pairs"] == 2 * 4 and len(report["coefficients"]) == 5
    assert report["coefficients"] == json.loads(dry.stdout.strip().splitlines()[-1])["coefficients"]
    assert read_bundle_spec(bundle).step_cache_coefficients == tuple(report["coefficients"])
    bad = runner.invoke(app, ["calibrate-cache", "--weights", str(bundle), "--prompts", "0"])
    assert bad.exit_code == 2 and "prompts must be in" in bad.output
