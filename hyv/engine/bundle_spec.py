"""What a model bundle's `bundle.json` says, without loading any weights (and without torch).

The API process reads the served model's name, defaults and limits from here; hyv.engine.bundle
re-exports these names next to the code that builds, saves and loads the modules themselves.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyv.engine.limits import BUCKETS_540P, BUCKETS_720P, ModelLimits

BUNDLE_FILE = "bundle.json"
# DiT header metadata "true_cfg": a DiT whose guidance embedding only ever saw the base value (an
# exported teacher, hyv.training.teacher_export) is sampled with true CFG (hyv.engine.pipeline).
GUIDANCE_MODE_METADATA_KEY = "guidance_mode"
# Where the training recipe and `hyv init-weights` write the small bundle: a checkout's weights/.
CHECKOUT_BUNDLE_DIR = Path("weights/hyv-small")
# The models that ship with the package (setup.py copies each weights/<name> that exists into the
# wheel as hyv/bundled/<name>): the student and its undistilled teacher (hyv.training.teacher_export).
BUNDLED_MODELS = ("hyv-small", "hyv-small-teacher")


def bundled_model_dir(name: str) -> Path | None:
    """Where the bundled model `name` is: inside the installed package (a wheel), else the checkout's
    weights/<name> (an editable install), else None."""
    package_dir = Path(__file__).resolve().parents[1]
    for candidate in (package_dir / "bundled" / name, package_dir.parent / "weights" / name):
        if (candidate / BUNDLE_FILE).is_file():
            return candidate
    return None


def bundled_model_names() -> list[str]:
    """The bundled models this installation has."""
    return [name for name in BUNDLED_MODELS if bundled_model_dir(name) is not None]


def default_bundle_dir() -> Path:
    """The bundled small model that `hyv generate` and `hyv serve` use without --weights.

    A wheel carries it inside the package (setup.py copies it to hyv/bundled/hyv-small); an
    editable install finds the checkout's weights/hyv-small; elsewhere it is ./weights/hyv-small.
    """
    return bundled_model_dir(CHECKOUT_BUNDLE_DIR.name) or CHECKOUT_BUNDLE_DIR


DEFAULT_BUNDLE_DIR = default_bundle_dir()


@dataclass(frozen=True)
class BundleSpec:
    name: str
    dit_preset: str
    vae_preset: str
    text_encoder_preset: str | None  # a BuiltinTextEncoder preset; None = external encoders by path
    limits: ModelLimits = field(default_factory=ModelLimits)
    trained: bool = False
    # The TeaCache polynomial (numpy.polyval order) from `hyv calibrate-cache`; None: identity.
    step_cache_coefficients: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.step_cache_coefficients is not None:  # JSON gives a list
            object.__setattr__(
                self, "step_cache_coefficients", tuple(float(c) for c in self.step_cache_coefficients)
            )

    def with_trained_dit(self, **changes: Any) -> BundleSpec:
        """This spec for newly trained DiT weights (and `changes`): trained, and without step-cache
        coefficients, which are fitted per DiT (`hyv calibrate-cache` fits the new one's)."""
        return dataclasses.replace(self, trained=True, step_cache_coefficients=None, **changes)


def read_bundle_spec(directory: str | Path) -> BundleSpec:
    """The spec of a bundle (its bundle.json) or of a HunyuanVideo release folder (hyv.engine.release).

    FileNotFoundError names what is missing; ValueError, a release this project cannot serve.
    """
    directory = Path(directory)
    path = directory / BUNDLE_FILE
    if not path.is_file():
        from hyv.engine.release import WHAT_IS_LOOKED_FOR, find_release  # it builds on BundleSpec

        layout = find_release(directory)
        if layout is not None:
            return layout.spec
        raise FileNotFoundError(
            f"no model bundle at {directory}: no {BUNDLE_FILE}, and not {WHAT_IS_LOOKED_FOR}; "
            "create a bundle with `hyv init-weights` or train one"
        )
    raw = json.loads(path.read_text())
    limits = ModelLimits(**raw.pop("limits", {}))
    return BundleSpec(**raw, limits=limits)


_LIMITS_13B = ModelLimits(
    width=960,
    height=544,
    num_frames=129,
    fps=24,
    steps=50,
    flow_shift=7.0,
    guidance=6.0,
    max_width=1280,
    max_height=1280,
    max_frames=129,
    buckets=BUCKETS_540P + BUCKETS_720P,
)

BUNDLE_PRESETS: dict[str, BundleSpec] = {
    "tiny": BundleSpec(
        "hyv-tiny",
        "tiny",
        "tiny",
        "tiny",
        ModelLimits(width=32, height=32, num_frames=5, steps=2, max_width=64, max_height=64, max_frames=9),
    ),
    # Served at its training size by default (the recipe trains at 64x64; larger sizes fragment).
    "small": BundleSpec(
        "hyv-small",
        "small",
        "small-flat",
        "small",
        # guidance 4, not 6: the one-forward CFG-distilled model keeps more of the teacher's
        # shapes at lower guidance (docs/training.md, 2026-12-02 evening)
        ModelLimits(width=64, height=64, guidance=4.0),
    ),
    "hunyuan-video-13b": BundleSpec(
        "hunyuan-video-13b",
        "hunyuan-video-13b",
        "hunyuan-video",
        None,
        _LIMITS_13B,
    ),
    "hunyuan-video-i2v-13b": BundleSpec(
        "hunyuan-video-i2v-13b",
        "hunyuan-video-i2v-13b",
        "hunyuan-video",
        None,
        dataclasses.replace(_LIMITS_13B, requires_image=True),
    ),
}
