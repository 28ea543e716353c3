"""A model bundle: the DiT, VAE and text encoder that serve together, in one directory.

Layout (all in the project's own formats):

    <bundle>/bundle.json        name, presets, generation defaults and limits
    <bundle>/dit/               hyv.models.save_dit (its metadata may hold a distilled schedule)
    <bundle>/vae/               hyv.models.save_vae
    <bundle>/text_encoder/      BuiltinTextEncoder.save_pretrained (absent for the 13B, whose
                                LLaVA-LLaMA-3 + CLIP encoders are given by path)

The training issue fills a bundle with trained weights; `hyv init-weights` writes one with
random weights so the whole path (and the 13B's speed) can be measured before any training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hyv.engine.bundle_spec import (
    BUNDLE_FILE,
    BUNDLE_PRESETS,
    CHECKOUT_BUNDLE_DIR,
    DEFAULT_BUNDLE_DIR,
    BundleSpec,
    read_bundle_spec,
)
from hyv.models import (
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
from hyv.models.text_encoder_builtin import WordTokenizer, default_caption_vocabulary

__all__ = [  # the spec half lives in hyv.engine.bundle_spec (no torch: the API and the CLI read it)
    "BUNDLE_FILE",
    "BUNDLE_PRESETS",
    "CHECKOUT_BUNDLE_DIR",
    "DEFAULT_BUNDLE_DIR",
    "BundleSpec",
    "ModelBundle",
    "init_random_bundle",
    "load_bundle",
    "read_bundle_spec",
    "save_bundle",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    spec: BundleSpec
    dit: HunyuanVideoDiT
    vae: CausalVAE3D
    text_encoder: TextEncoder | None


def _random_module(module_cls: type[torch.nn.Module], config: object, dtype: torch.dtype) -> torch.nn.Module:
    """The module's own initialization, allocated directly in `dtype` (a 13B DiT never exists in
    fp32: 26 GB in bf16 instead of 51 GB)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return module_cls(config)  # type: ignore[call-arg]
    finally:
        torch.set_default_dtype(previous)


def init_random_bundle(preset: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A bundle of the named preset with freshly initialized (untrained) weights."""
    if preset not in BUNDLE_PRESETS:
        raise ValueError(f"unknown bundle preset {preset!r}; choose one of {sorted(BUNDLE_PRESETS)}")
    spec = BUNDLE_PRESETS[preset]
    torch.manual_seed(seed)
    dit_config = dit_preset(spec.dit_preset)
    text_encoder = None
    if spec.text_encoder_preset is not None:
        text_config = BuiltinTextEncoderConfig.preset(spec.text_encoder_preset)
        if (dit_config.text_dim, dit_config.pooled_dim) != (text_config.dim, text_config.pooled_dim):
            raise ValueError(
                f"bundle {preset!r}: DiT text dims {(dit_config.text_dim, dit_config.pooled_dim)} "
                f"do not match the text encoder's {(text_config.dim, text_config.pooled_dim)}"
            )
        text_encoder = BuiltinTextEncoder(text_config, WordTokenizer(default_caption_vocabulary())).to(dtype)
    dit = _random_module(HunyuanVideoDiT, dit_config, dtype)
    vae = _random_module(CausalVAE3D, vae_preset(spec.vae_preset), dtype)
    return ModelBundle(spec, dit, vae, text_encoder)  # type: ignore[arg-type]


def save_bundle(
    bundle: ModelBundle, directory: str | Path, dit_metadata: dict[str, str] | None = None
) -> Path:
    """Write the bundle; `dit_metadata` (e.g. a distilled schedule) goes into the DiT's header."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_dit(bundle.dit, directory / "dit", metadata=dit_metadata)
    save_vae(bundle.vae, directory / "vae")
    if bundle.text_encoder is not None:
        bundle.text_encoder.save_pretrained(directory / "text_encoder")  # type: ignore[attr-defined]
    (directory / BUNDLE_FILE).write_text(json.dumps(asdict(bundle.spec), indent=2))
    logger.info("saved bundle %s to %s", bundle.spec.name, directory)
    return directory


def load_bundle(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    text_encoder_path: str | Path | None = None,
    text_encoder_device: torch.device | str | None = None,
) -> ModelBundle:
    """Load a bundle; `text_encoder_path` points at external encoders (required for the 13B)."""
    directory = Path(directory)
    spec = read_bundle_spec(directory)
    dit = load_dit(directory / "dit", dtype=dtype, device=device)
    vae = load_vae(directory / "vae", dtype=dtype, device=device)
    source = text_encoder_path or (directory / "text_encoder" if spec.text_encoder_preset else None)
    if source is None:
        raise ValueError(
            f"bundle {spec.name} has no built-in text encoder: pass the directory of the HunyuanVideo "
            "text encoders (text_encoder/ + text_encoder_2/) as text_encoder_path (--text-encoder)"
        )
    text_encoder = load_text_encoder(source, device=text_encoder_device or device, dtype=dtype)
    return ModelBundle(spec, dit, vae, text_encoder)
