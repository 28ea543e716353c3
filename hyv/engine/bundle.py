"""A model bundle: the DiT, VAE and text encoder that serve together, in one directory.

Layout (all in the project's own formats):

    <bundle>/bundle.json        name, presets, generation defaults and limits
    <bundle>/dit/               hyv.models.save_dit (its metadata may hold a distilled schedule)
    <bundle>/vae/               hyv.models.save_vae
    <bundle>/text_encoder/      BuiltinTextEncoder.save_pretrained (absent for the 13B, whose
                                LLaVA-LLaMA-3 + CLIP encoders are given by path ...)
    <bundle>/text_encoders/     ... or kept here: text_encoder/ + text_encoder_2/ (+ tokenizer/,
                                tokenizer_2/), as `convert_release` copies them from a release

A HunyuanVideo release folder (Tencent's or diffusers', hyv.engine.release) loads without a
bundle.json too; `convert_release` writes it as a bundle.

The training recipe (hyv.training) fills a bundle with trained weights; `hyv init-weights` writes
one with random weights so the whole path (and the 13B's speed) can be measured before any training.
"""

from __future__ import annotations

import json
import logging
import shutil
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
from hyv.engine.release import ReleaseLayout, find_release
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
from hyv.models.fp8 import quantize_dit_
from hyv.models.text_encoder_builtin import WordTokenizer, default_caption_vocabulary

__all__ = [  # the spec half lives in hyv.engine.bundle_spec (no torch: the API and the CLI read it)
    "BUNDLE_FILE",
    "BUNDLE_PRESETS",
    "CHECKOUT_BUNDLE_DIR",
    "DEFAULT_BUNDLE_DIR",
    "BundleSpec",
    "ModelBundle",
    "convert_release",
    "init_random_bundle",
    "load_bundle",
    "read_bundle_spec",
    "save_bundle",
]

logger = logging.getLogger(__name__)

HF_TEXT_ENCODERS_DIR = "text_encoders"  # a bundle's copy of the HunyuanVideo text encoders
_HF_TEXT_ENCODER_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


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
    """Load a bundle or a release folder; `text_encoder_path` points at external encoders (the 13B
    bundle of `hyv init-weights` needs them; a release or a converted release has its own)."""
    directory = Path(directory)
    if not (directory / BUNDLE_FILE).is_file() and (layout := find_release(directory)) is not None:
        return _load_release(layout, device, dtype, text_encoder_path, text_encoder_device)
    spec = read_bundle_spec(directory)
    dit = load_dit(directory / "dit", dtype=dtype, device=device)
    vae = load_vae(directory / "vae", dtype=dtype, device=device)
    source = text_encoder_path or _bundled_text_encoder(directory, spec)
    if source is None:
        raise ValueError(
            f"bundle {spec.name} has no built-in text encoder: pass the directory of the HunyuanVideo "
            "text encoders (text_encoder/ + text_encoder_2/) as text_encoder_path (--text-encoder)"
        )
    text_encoder = load_text_encoder(source, device=text_encoder_device or device, dtype=dtype)
    return ModelBundle(spec, dit, vae, text_encoder)


def _bundled_text_encoder(directory: Path, spec: BundleSpec) -> Path | None:
    if spec.text_encoder_preset:
        return directory / "text_encoder"
    if (directory / HF_TEXT_ENCODERS_DIR).is_dir():
        return directory / HF_TEXT_ENCODERS_DIR
    return None


def _load_release(
    layout: ReleaseLayout,
    device: torch.device | str,
    dtype: torch.dtype | None,
    text_encoder_path: str | Path | None,
    text_encoder_device: torch.device | str | None,
) -> ModelBundle:
    logger.info("loading the %s-layout HunyuanVideo release at %s", layout.kind, layout.root)
    dit = load_dit(layout.dit, dtype=dtype, device=device)
    vae = load_vae(layout.vae, dtype=dtype, device=device)
    text_encoder = load_text_encoder(
        text_encoder_path or layout.text_encoders, device=text_encoder_device or device, dtype=dtype
    )
    return ModelBundle(layout.spec, dit, vae, text_encoder)


def convert_release(
    source: str | Path,
    output: str | Path,
    dtype: torch.dtype | None = None,
    link_text_encoders: bool = False,
    dit_fp8: bool = False,
) -> Path:
    """Write the release folder `source` as a bundle in `output`: dit/ and vae/ in the project's
    format (in `dtype`; None keeps the checkpoint's), the text encoders copied into text_encoders/
    (or symlinked there with `link_text_encoders`), and bundle.json with the release's spec.
    `dit_fp8` stores the DiT's block linears as FP8 with per-channel scales (hyv.models.fp8); an
    FP8 release stays FP8 either way."""
    source, output = Path(source), Path(output)
    layout = find_release(source)
    if layout is None:
        raise FileNotFoundError(f"{source} is not a HunyuanVideo release folder (no {BUNDLE_FILE} either)")
    output.mkdir(parents=True, exist_ok=True)
    dit = load_dit(layout.dit, dtype=dtype)
    if dit_fp8:
        quantize_dit_(dit)
    save_dit(dit, output / "dit")
    save_vae(load_vae(layout.vae, dtype=dtype), output / "vae")
    encoders = output / HF_TEXT_ENCODERS_DIR
    if encoders.is_symlink() or encoders.is_file():
        encoders.unlink()
    elif encoders.exists():
        shutil.rmtree(encoders)
    encoders.mkdir()
    for name in _HF_TEXT_ENCODER_PARTS:
        part = layout.text_encoders / name
        if not part.is_dir():
            continue  # Tencent's layout keeps each tokenizer inside its model folder
        if link_text_encoders:
            (encoders / name).symlink_to(part.resolve(), target_is_directory=True)
        else:
            shutil.copytree(part, encoders / name)
    (output / BUNDLE_FILE).write_text(json.dumps(asdict(layout.spec), indent=2))
    logger.info("converted the %s-layout release %s into the bundle %s", layout.kind, source, output)
    return output
