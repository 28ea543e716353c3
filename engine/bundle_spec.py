"""What a model bundle's `bundle.json` says, without loading any weights (and without torch).

The API process reads the served model's name, defaults and limits from here; engine.bundle
re-exports these names next to the code that builds, saves and loads the modules themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.limits import ModelLimits

BUNDLE_FILE = "bundle.json"
DEFAULT_BUNDLE_DIR = Path("weights/hyv-small")


@dataclass(frozen=True)
class BundleSpec:
    name: str
    dit_preset: str
    vae_preset: str
    text_encoder_preset: str | None  # a BuiltinTextEncoder preset; None = external encoders by path
    limits: ModelLimits = field(default_factory=ModelLimits)
    trained: bool = False


def read_bundle_spec(directory: str | Path) -> BundleSpec:
    path = Path(directory) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no model bundle at {Path(directory)} (missing {BUNDLE_FILE}); "
            "create one with `hyv init-weights` or train one"
        )
    raw = json.loads(path.read_text())
    limits = ModelLimits(**raw.pop("limits", {}))
    return BundleSpec(**raw, limits=limits)
