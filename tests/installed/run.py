"""`make test-installed`: the product as a user installs it, tested from outside the checkout.

1. Builds the wheel (`python -m build --wheel`) from the checkout.
2. Creates a fresh virtualenv in a temporary folder and installs torch, then the wheel with its
   `text-encoders` extra, transformers and diffusers (which bring Hugging Face's `kernels`
   package), the openai SDK and pytest, at the lock file's versions (`--lock`; `--latest` takes
   the newest the index resolves).
3. Copies check_installed.py and the release-fixture script into another temporary folder and
   runs pytest there with that virtualenv, so nothing of the checkout is on sys.path.

Usage: python tests/installed/run.py [--lock requirements/lock.txt | --latest] [--keep]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# What the tests import beside the wheel (pytest runs them; the rest is what users add).
TEST_PACKAGES = ["transformers", "diffusers", "openai", "pytest", "pytest-timeout", "httpx"]

logger = logging.getLogger("test-installed")


def _run(command: list[str | Path], quiet: bool = False) -> None:
    """Run a step; a quiet one shows its output only when it fails."""
    logger.info("$ %s", " ".join(str(part) for part in command))
    result = subprocess.run([str(part) for part in command], capture_output=quiet, text=True, check=False)
    if result.returncode:
        if quiet:
            sys.stderr.write(result.stdout[-20000:] + result.stderr[-20000:])
        raise SystemExit(f"failed ({result.returncode}): {command[:4]}")


def build_wheel(out_dir: Path) -> Path:
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", out_dir, ROOT], quiet=True)
    (wheel,) = out_dir.glob("hyvideo_serve-*.whl")
    return wheel


def make_venv(venv_dir: Path, wheel: Path, torch_version: str, lock: Path | None) -> Path:
    _run([sys.executable, "-m", "venv", venv_dir])
    python = venv_dir / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-qq", "--disable-pip-version-check"]  # -qq: errors only
    _run([*pip, f"torch=={torch_version}"])  # first: the CPU build from the local disk, not CUDA
    constraints: list[str | Path] = ["-c", lock] if lock is not None else []
    _run([*pip, *constraints, f"{wheel}[text-encoders]", *TEST_PACKAGES])
    return python


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch-version", default="2.13.0")
    versions = parser.add_mutually_exclusive_group()
    versions.add_argument("--lock", type=Path, default=ROOT / "requirements" / "lock.txt")
    versions.add_argument("--latest", action="store_true", help="no lock: the newest versions")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="hyv-installed-"))
    try:
        wheel = build_wheel(work / "dist")
        python = make_venv(
            work / "venv", wheel, args.torch_version, None if args.latest else args.lock.resolve()
        )
        tests = work / "tests"
        tests.mkdir()
        shutil.copy(HERE / "check_installed.py", tests)
        shutil.copy(ROOT / "tests" / "fixtures" / "make_release_fixtures.py", tests)
        # A user's environment: the virtualenv's bin first, nothing of the checkout on the path.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
        env["HYV_TEST_WHEEL"] = str(wheel)
        env["HYV_TEST_CHECKOUT"] = str(ROOT)
        command = [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "check_installed.py",
            *args.pytest_args,
        ]
        logger.info("$ (cd %s) %s", tests, " ".join(str(part) for part in command))
        return subprocess.run([str(part) for part in command], cwd=tests, env=env, check=False).returncode
    finally:
        if args.keep:
            logger.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
