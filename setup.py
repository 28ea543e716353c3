"""Build hook: the wheel carries the bundled model, so `hyv generate` and `hyv serve` work with
their defaults wherever the package is installed (hyv.engine.bundle_spec.default_bundle_dir).

The model stays in weights/hyv-small at the repository root (the training recipe writes it there);
this copies it to hyv/bundled/hyv-small in the build tree, and its teacher weights/hyv-small-teacher
beside it when it is there. Editable installs read it from the
checkout instead. Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHTS = Path(__file__).parent / "weights"
BUNDLE_SOURCE = WEIGHTS / "hyv-small"
# Shipped beside it when present (hyv.engine.bundle_spec.BUNDLED_MODELS): the undistilled teacher.
OPTIONAL_BUNDLES = ("hyv-small-teacher",)


class BuildPyWithBundle(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads weights/hyv-small from the checkout
            return
        if not (BUNDLE_SOURCE / "bundle.json").is_file():
            raise SystemExit(f"{BUNDLE_SOURCE} has no bundle.json: the wheel must carry the bundled model")
        bundled = Path(self.build_lib) / "hyv" / "bundled"
        present = [WEIGHTS / name for name in OPTIONAL_BUNDLES if (WEIGHTS / name / "bundle.json").is_file()]
        sources = [BUNDLE_SOURCE, *present]
        for source in sources:
            target = bundled / source.name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)  # links (the teacher's VAE and text encoder) copied as files


setup(cmdclass={"build_py": BuildPyWithBundle})
