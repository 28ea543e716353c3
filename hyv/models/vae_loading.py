"""Loading and saving the causal 3D VAE.

`load_vae(path)` recognises:
  (a) the official HunyuanVideo layout: `vae/pytorch_model.pt` (tensors possibly under
      module/ema/state_dict and/or prefixed `vae.`) with `config.json` of class
      AutoencoderKLCausal3D beside it; without a config the architecture is inferred from shapes;
  (b) a diffusers `AutoencoderKLHunyuanVideo` directory (config.json + safetensors, as
      `save_pretrained` writes), or a pipeline directory holding one under `vae/`;
  (c) this project's own format written by `save_vae` (format tag "hyv-vae").
All three share diffusers' parameter names, so no key is renamed. The model is built on the meta
device and takes the (memory-mapped) tensors with `load_into(..., assign=True)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from hyv.models.checkpoint_io import (
    CheckpointError,
    is_own_format,
    load_into,
    parse_dtype,
    read_json,
    read_safetensors_dir,
    read_state_dict,
    save_own_format,
)
from hyv.models.vae import CausalVAE3D
from hyv.models.vae_config import VAEConfig, vae_preset

logger = logging.getLogger(__name__)

FORMAT_NAME = "hyv-vae"
OFFICIAL_CLASS = "AutoencoderKLCausal3D"
DIFFUSERS_CLASS = "AutoencoderKLHunyuanVideo"
OFFICIAL_WEIGHT_NAMES = ("pytorch_model.pt", "pytorch_model.pth", "pytorch_model.bin", "model.pt")
DIFFUSERS_BIN_NAME = "diffusion_pytorch_model.bin"
_BLOCK_TYPES = {
    OFFICIAL_CLASS: ("DownEncoderBlockCausal3D", "UpDecoderBlockCausal3D"),
    DIFFUSERS_CLASS: ("HunyuanVideoDownBlock3D", "HunyuanVideoUpBlock3D"),
}
_SHARED_FIELDS = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "layers_per_block",
    "norm_num_groups",
    "act_fn",
    "scaling_factor",
    "mid_block_add_attention",
)


def save_vae(vae: CausalVAE3D, directory: str | Path) -> Path:
    """Write `vae` in the project's own format (config.json + model.safetensors)."""
    return save_own_format(directory, vae.state_dict(), vae.config.to_dict(), format_name=FORMAT_NAME)


def config_from_reference(data: dict[str, Any], source: str) -> VAEConfig:
    """VAEConfig from an official (AutoencoderKLCausal3D) or diffusers config.json."""
    class_name = data.get("_class_name")
    if class_name not in _BLOCK_TYPES:
        raise CheckpointError(
            f"{source}: config is for {class_name!r}, not a HunyuanVideo VAE "
            f"(expected {OFFICIAL_CLASS!r} or {DIFFUSERS_CLASS!r})"
        )
    down_type, up_type = _BLOCK_TYPES[class_name]
    for key, expected in (("down_block_types", down_type), ("up_block_types", up_type)):
        found = set(data.get(key, [expected]))
        if found != {expected}:
            raise CheckpointError(f"{source}: unsupported {key} {sorted(found)} (expected only {expected!r})")
    fields: dict[str, Any] = {name: data[name] for name in _SHARED_FIELDS if name in data}
    if "block_out_channels" in data:
        fields["block_out_channels"] = tuple(data["block_out_channels"])
    if class_name == OFFICIAL_CLASS:
        if "time_compression_ratio" in data:
            fields["temporal_compression_ratio"] = data["time_compression_ratio"]
        if "sample_size" in data:
            fields["tile_sample_size"] = data["sample_size"]
        if "sample_tsize" in data:
            fields["tile_sample_frames"] = data["sample_tsize"]
        channels = fields.get("block_out_channels", VAEConfig.block_out_channels)
        fields["spatial_compression_ratio"] = 2 ** (len(channels) - 1)
    else:
        for name in ("spatial_compression_ratio", "temporal_compression_ratio"):
            if name in data:
                fields[name] = data[name]
    try:
        return VAEConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid VAE config: {exc}") from exc


def infer_config(state_dict: dict[str, torch.Tensor], source: str) -> VAEConfig:
    """Architecture from tensor shapes, for an official `.pt` without config.json.

    GroupNorm's group count is not visible in shapes: the official 32 is assumed when it divides
    every block width, else the largest power of two <= 32 that does (with a warning).
    """
    if "encoder.conv_in.conv.weight" not in state_dict or "decoder.conv_in.conv.weight" not in state_dict:
        raise CheckpointError(
            f"{source}: not a HunyuanVideo causal VAE checkpoint (no encoder.conv_in.conv.weight / "
            f"decoder.conv_in.conv.weight; keys e.g. {sorted(state_dict)[:4]})"
        )
    channels: list[int] = []
    while (key := f"encoder.down_blocks.{len(channels)}.resnets.0.conv1.conv.weight") in state_dict:
        channels.append(int(state_dict[key].shape[0]))
    layers = 0
    while f"encoder.down_blocks.0.resnets.{layers}.conv1.conv.weight" in state_dict:
        layers += 1
    if not channels:
        raise CheckpointError(f"{source}: cannot infer block_out_channels (no encoder.down_blocks.*)")
    groups = 32
    while groups > 1 and any(c % groups for c in channels):
        groups //= 2
    if groups != 32:
        logger.warning("%s: no config.json; assuming norm_num_groups=%d from block widths", source, groups)
    official = vae_preset("hunyuan-video")
    try:
        config = VAEConfig(
            in_channels=int(state_dict["encoder.conv_in.conv.weight"].shape[1]),
            out_channels=int(state_dict["decoder.conv_out.conv.weight"].shape[0]),
            latent_channels=int(state_dict["decoder.conv_in.conv.weight"].shape[1]),
            block_out_channels=tuple(channels),
            layers_per_block=layers,
            norm_num_groups=groups,
            spatial_compression_ratio=2 ** (len(channels) - 1),
            scaling_factor=official.scaling_factor,
            mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state_dict,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: cannot infer the VAE architecture from shapes: {exc}") from exc
    logger.info("%s: no config.json, inferred %s", source, config)
    return config


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the VAE's tensors of a checkpoint whose keys are prefixed `vae.`."""
    if any(k.startswith("vae.") for k in state_dict):
        return {k[len("vae.") :]: v for k, v in state_dict.items() if k.startswith("vae.")}
    return state_dict


def _find_official_weights(directory: Path) -> Path:
    for name in OFFICIAL_WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(directory.glob("*.pt")) + sorted(directory.glob("*.pth"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"{directory}: no official VAE weights ({' / '.join(OFFICIAL_WEIGHT_NAMES)})")


def _read_source(path: Path, config: VAEConfig | None) -> tuple[VAEConfig, dict[str, torch.Tensor], str]:
    """(config, state dict, description) of whatever VAE checkpoint lies at `path`."""
    if path.is_dir():
        if is_own_format(path, FORMAT_NAME):
            stored = {k: v for k, v in read_json(path / "config.json").items() if not k.startswith("_")}
            try:
                own = VAEConfig.from_dict(stored)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: invalid hyv-vae config: {exc}") from exc
            return config or own, read_state_dict(path / "model.safetensors"), "hyv-vae"
        config_path = path / "config.json"
        if not config_path.is_file():
            if (path / "vae").is_dir():
                return _read_source(path / "vae", config)
            raise CheckpointError(f"{path}: no config.json and no vae/ subdirectory; not a VAE checkpoint")
        data = read_json(config_path)
        if "_hyv_format" in data:
            raise CheckpointError(
                f"{path}: project checkpoint of kind {data['_hyv_format']!r}, not {FORMAT_NAME!r}"
            )
        if data.get("_class_name") is None and (path / "vae").is_dir():
            return _read_source(path / "vae", config)  # a pipeline root (model_index.json)
        ref = config_from_reference(data, str(config_path))
        if data["_class_name"] == DIFFUSERS_CLASS:
            if any(path.glob("*.safetensors")):
                state = read_safetensors_dir(path)
            elif (path / DIFFUSERS_BIN_NAME).is_file():
                state = read_state_dict(path / DIFFUSERS_BIN_NAME)
            else:
                raise CheckpointError(f"{path}: diffusers VAE directory without weights")
            return config or ref, state, "diffusers"
        weights = _find_official_weights(path)
        return config or ref, _strip_prefix(read_state_dict(weights)), "official"
    # A single weight file: the official .pt (config.json beside it, if any) or a bare safetensors.
    state = _strip_prefix(read_state_dict(path))
    sibling = path.parent / "config.json"
    if config is None and sibling.is_file():
        config = config_from_reference(read_json(sibling), str(sibling))
    return config or infer_config(state, str(path)), state, "official"


def load_vae(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    config: VAEConfig | None = None,
) -> CausalVAE3D:
    """Load a causal 3D VAE from an official, diffusers or own-format checkpoint (see module doc).

    dtype: None keeps the checkpoint's floating dtype; `config` overrides the stored config.
    Raises CheckpointError for missing, truncated or foreign checkpoints.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE checkpoint not found: {path}")
    vae_config, state, kind = _read_source(path, config)
    if "encoder.conv_in.conv.weight" not in state:
        raise CheckpointError(
            f"{path}: not a HunyuanVideo causal VAE checkpoint (no encoder.conv_in.conv.weight; "
            f"keys e.g. {sorted(state)[:4]})"
        )
    target = parse_dtype(dtype)
    if target is None:
        target = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    state = {k: v.to(target) if v.is_floating_point() and v.dtype != target else v for k, v in state.items()}
    with torch.device("meta"):
        vae = CausalVAE3D(vae_config)
    load_into(vae, state, what=f"VAE ({kind}) {path}")
    logger.info("loaded %s VAE from %s (%s, %s)", kind, path, target, device)
    return vae.to(device=device).eval()
