"""A model bundle: the DiT, VAE and text encoder that serve together, in one directory.

Layout (all in the project's own formats):

    <bundle>/bundle.json        name, presets, generation defaults and limits
    <bundle>/dit/               models.save_dit
    <bundle>/vae/               models.save_vae
    <bundle>/text_encoder/      BuiltinTextEncoder.save_pretrained

The training issue fills a bundle with trained weights; `hyv init-weights` writes one with
random weights so the whole path can run before any training has happened.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    CausalVAE3D,
    HunyuanVideoDiT,
    TextEncoder,
    dit_preset,
    load_dit,
    load_text_encoder,
    load_vae,
    save_dit,
    save_vae,
    vae_preset,
)
from models.text_encoder_builtin import WordTokenizer, default_caption_vocabulary

logger = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
DEFAULT_BUNDLE_DIR = Path("weights/hyv-small")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets when it leaves a field out, and the limits it must stay within."""

    width: int = 128
    height: int = 128
    num_frames: int = 17
    fps: int = 8
    steps: int = 12
    flow_shift: float = 5.0
    guidance: float = 6.0
    max_width: int = 512
    max_height: int = 512
    max_frames: int = 65


@dataclass(frozen=True)
class BundleSpec:
    name: str
    dit_preset: str
    vae_preset: str
    text_encoder_preset: str
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    trained: bool = False


BUNDLE_PRESETS: dict[str, BundleSpec] = {
    "tiny": BundleSpec(
        "hyv-tiny",
        "tiny",
        "tiny",
        "tiny",
        GenerationDefaults(
            width=32, height=32, num_frames=5, steps=2, max_width=64, max_height=64, max_frames=9
        ),
    ),
    "small": BundleSpec("hyv-small", "small", "small", "small"),
}


@dataclass
class ModelBundle:
    spec: BundleSpec
    dit: HunyuanVideoDiT
    vae: CausalVAE3D
    text_encoder: TextEncoder

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelBundle:
        self.dit.to(device=device, dtype=dtype)
        self.vae.to(device=device, dtype=dtype)
        self.text_encoder.to(device=device, dtype=dtype)
        return self


def init_random_bundle(preset: str, seed: int = 0) -> ModelBundle:
    """A bundle of the named preset with freshly initialized (untrained) weights."""
    if preset not in BUNDLE_PRESETS:
        raise ValueError(f"unknown bundle preset {preset!r}; choose one of {sorted(BUNDLE_PRESETS)}")
    spec = BUNDLE_PRESETS[preset]
    torch.manual_seed(seed)
    text_config = BuiltinTextEncoderConfig.preset(spec.text_encoder_preset)
    text_encoder = BuiltinTextEncoder(text_config, WordTokenizer(default_caption_vocabulary()))
    dit_config = dit_preset(spec.dit_preset)
    if (dit_config.text_dim, dit_config.pooled_dim) != (text_config.dim, text_config.pooled_dim):
        raise ValueError(
            f"bundle {preset!r}: DiT text dims {(dit_config.text_dim, dit_config.pooled_dim)} "
            f"do not match the text encoder's {(text_config.dim, text_config.pooled_dim)}"
        )
    return ModelBundle(
        spec, HunyuanVideoDiT(dit_config), CausalVAE3D(vae_preset(spec.vae_preset)), text_encoder
    )


def save_bundle(bundle: ModelBundle, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_dit(bundle.dit, directory / "dit")
    save_vae(bundle.vae, directory / "vae")
    bundle.text_encoder.save_pretrained(directory / "text_encoder")  # type: ignore[attr-defined]
    (directory / BUNDLE_FILE).write_text(json.dumps(asdict(bundle.spec), indent=2))
    logger.info("saved bundle %s to %s", bundle.spec.name, directory)
    return directory


def read_bundle_spec(directory: str | Path) -> BundleSpec:
    path = Path(directory) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no model bundle at {Path(directory)} (missing {BUNDLE_FILE}); "
            "create one with `hyv init-weights` or train one"
        )
    raw = json.loads(path.read_text())
    defaults = GenerationDefaults(**raw.pop("defaults", {}))
    return BundleSpec(**raw, defaults=defaults)


def load_bundle(
    directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> ModelBundle:
    directory = Path(directory)
    spec = read_bundle_spec(directory)
    dit = load_dit(directory / "dit", dtype=dtype, device=device)
    vae = load_vae(directory / "vae", dtype=dtype, device=device)
    text_encoder = load_text_encoder(directory / "text_encoder", device=device, dtype=dtype)
    return ModelBundle(spec, dit, vae, text_encoder)
