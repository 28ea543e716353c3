"""Build hook: the wheel carries the bundled model, so `hyv generate` and `hyv serve` work with
their defaults wherever the package is installed (hyv.engine.bundle_spec.default_bundle_dir).

The model stays in weights/hyv-small at the repository root (the training recipe writes it there);
this copies it to hyv/bundled/hyv-small in the build tree. Editable installs read it from the
checkout instead. Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLE_SOURCE = Path(__file__).parent / "weights" / "hyv-small"


class BuildPyWithBundle(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads weights/hyv-small from the checkout
            return
        if not (BUNDLE_SOURCE / "bundle.json").is_file():
            raise SystemExit(f"{BUNDLE_SOURCE} has no bundle.json: the wheel must carry the bundled model")
        target = Path(self.build_lib) / "hyv" / "bundled" / "hyv-small"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(BUNDLE_SOURCE, target)


setup(cmdclass={"build_py": BuildPyWithBundle})
