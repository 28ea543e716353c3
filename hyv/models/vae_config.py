"""Configuration of the 3D causal VAE ("884-16c-hy": 4x time, 8x8 space, 16 latent channels).

`VAEConfig` describes the architecture (same meaning as diffusers' `AutoencoderKLHunyuanVideo`
config and the official `AutoencoderKLCausal3D` config) plus the default tiling. `VAETiling`
holds the tile geometry used by tiled encode/decode, in sample (pixel/frame) units.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SUPPORTED_ACTIVATIONS = ("silu", "swish")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class VAETiling:
    """Tile geometry in sample units; strides are `size * (1 - overlap)` as in the official code.

    sample_size: spatial tile edge in pixels (official 256 -> 32 latent pixels).
    sample_frames: temporal tile length in frames (official 64 -> 16 latent frames); a temporal
        tile actually covers `sample_frames + 1` frames because the first frame of a causal clip
        is encoded on its own.
    overlap: fraction of a tile shared with its neighbour, blended linearly (official 0.25).
    """

    sample_size: int = 256
    sample_frames: int = 64
    overlap: float = 0.25
    spatial_ratio: int = 8
    temporal_ratio: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tiling overlap must be in [0, 1), got {self.overlap}")
        if self.sample_size <= 0 or self.sample_size % self.spatial_ratio:
            raise ValueError(
                f"tile sample_size must be a positive multiple of {self.spatial_ratio}, "
                f"got {self.sample_size}"
            )
        if self.sample_frames <= 0 or self.sample_frames % self.temporal_ratio:
            raise ValueError(
                f"tile sample_frames must be a positive multiple of {self.temporal_ratio}, "
                f"got {self.sample_frames}"
            )
        if self.stride_size <= 0 or self.stride_size % self.spatial_ratio:
            raise ValueError(
                f"tile spatial stride sample_size*(1-overlap) = {self.stride_size} must be a positive "
                f"multiple of {self.spatial_ratio} (sample_size={self.sample_size}, overlap={self.overlap})"
            )
        if self.stride_frames <= 0 or self.stride_frames % self.temporal_ratio:
            raise ValueError(
                f"tile temporal stride sample_frames*(1-overlap) = {self.stride_frames} must be a positive "
                f"multiple of {self.temporal_ratio} "
                f"(sample_frames={self.sample_frames}, overlap={self.overlap})"
            )

    # Sample-space geometry.
    @property
    def stride_size(self) -> int:
        return int(self.sample_size * (1 - self.overlap))

    @property
    def stride_frames(self) -> int:
        return int(self.sample_frames * (1 - self.overlap))

    # Latent-space geometry.
    @property
    def latent_size(self) -> int:
        return self.sample_size // self.spatial_ratio

    @property
    def latent_stride_size(self) -> int:
        return self.stride_size // self.spatial_ratio

    @property
    def latent_frames(self) -> int:
        return self.sample_frames // self.temporal_ratio

    @property
    def latent_stride_frames(self) -> int:
        return self.stride_frames // self.temporal_ratio


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the causal 3D VAE; field names follow diffusers' AutoencoderKLHunyuanVideo."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    # Groups of the decoder's norms; None: norm_num_groups (the official model); 0: no normalization
    # in the decoder (for flat-colored synthetic data, see hyv.models.vae_blocks.group_norm).
    decoder_norm_num_groups: int | None = None
    act_fn: str = "silu"
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    scaling_factor: float = 0.476986
    # Per-channel latent statistics (diffusers' AutoencoderKLWan names). When set, the DiT sees
    # (z - latents_mean) / latents_std, unit variance in every channel, instead of z * scaling_factor;
    # the official HunyuanVideo VAE has none.
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    mid_block_add_attention: bool = True
    # Default tiling (official: sample_size 256, sample_tsize 64, overlap factor 0.25).
    tile_sample_size: int = 256
    tile_sample_frames: int = 64
    tile_overlap: float = 0.25

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        if len(self.block_out_channels) < 3 or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(
                "VAEConfig.block_out_channels must hold at least 3 positive ints, "
                f"got {self.block_out_channels!r}"
            )
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"VAEConfig.norm_num_groups={self.norm_num_groups} does not divide "
                    f"block channels {channels} "
                    f"(block_out_channels={self.block_out_channels})"
                )
        groups = self.decoder_norm_num_groups
        if groups is not None:
            if not isinstance(groups, int) or isinstance(groups, bool) or groups < 0:
                raise ValueError(
                    f"VAEConfig.decoder_norm_num_groups must be None or an int >= 0, not {groups!r}"
                )
            if groups and any(channels % groups for channels in self.block_out_channels):
                raise ValueError(
                    f"VAEConfig.decoder_norm_num_groups={groups} does not divide the block channels "
                    f"{self.block_out_channels}"
                )
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"VAEConfig.act_fn must be one of {SUPPORTED_ACTIVATIONS}, got {self.act_fn!r}")
        if self.temporal_compression_ratio != 4:
            raise ValueError(
                f"VAEConfig.temporal_compression_ratio must be 4 (the causal decoder supports only 4x), "
                f"got {self.temporal_compression_ratio}"
            )
        implied = 2 ** (len(self.block_out_channels) - 1)
        if not _is_power_of_two(self.spatial_compression_ratio) or self.spatial_compression_ratio != implied:
            raise ValueError(
                f"VAEConfig.spatial_compression_ratio={self.spatial_compression_ratio} does not match the "
                f"{len(self.block_out_channels)} blocks of block_out_channels (implies {implied})"
            )
        if not (isinstance(self.scaling_factor, int | float) and math.isfinite(self.scaling_factor)) or (
            self.scaling_factor <= 0
        ):
            raise ValueError(
                f"VAEConfig.scaling_factor must be a positive finite number, got {self.scaling_factor!r}"
            )
        self._check_latent_stats()
        self.tiling()  # validates tile_sample_size / tile_sample_frames / tile_overlap

    def _check_latent_stats(self) -> None:
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError(
                "VAEConfig.latents_mean and latents_std must be given together, got "
                f"latents_mean={self.latents_mean!r}, latents_std={self.latents_std!r}"
            )
        for name in ("latents_mean", "latents_std"):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(float(v) for v in values)
            object.__setattr__(self, name, values)
            if len(values) != self.latent_channels or not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"VAEConfig.{name} must hold {self.latent_channels} finite numbers (one per latent "
                    f"channel), got {values!r}"
                )
        if self.latents_std is not None and min(self.latents_std) <= 0:
            raise ValueError(f"VAEConfig.latents_std must be positive, got {self.latents_std!r}")

    @property
    def decoder_groups(self) -> int:
        """The decoder's norm groups (0: none)."""
        return self.norm_num_groups if self.decoder_norm_num_groups is None else self.decoder_norm_num_groups

    def tiling(self) -> VAETiling:
        return VAETiling(
            sample_size=self.tile_sample_size,
            sample_frames=self.tile_sample_frames,
            overlap=self.tile_overlap,
            spatial_ratio=self.spatial_compression_ratio,
            temporal_ratio=self.temporal_compression_ratio,
        )

    def replace(self, **changes: Any) -> VAEConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["block_out_channels"] = list(self.block_out_channels)
        for name in ("latents_mean", "latents_std"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"VAEConfig.from_dict: unknown fields {unknown}")
        return cls(**data)


_PRESETS: dict[str, VAEConfig] = {
    # The released HunyuanVideo VAE (AutoencoderKLCausal3D, 884-16c-hy).
    "hunyuan-video": VAEConfig(),
    # Unit tests: a few thousand parameters, same 4x/8x compression and 16 latent channels.
    "tiny": VAEConfig(block_out_channels=(8, 8, 16, 16), norm_num_groups=4, layers_per_block=1),
    # The bundled model trained in this project on CPU / one GPU.
    "small": VAEConfig(block_out_channels=(16, 32, 64, 64), norm_num_groups=8, layers_per_block=1),
    # The same without normalization in the decoder, which can then paint the flat backgrounds of the
    # synthetic data (docs/training.md, "Status").
    "small-flat": VAEConfig(
        block_out_channels=(16, 32, 64, 64), norm_num_groups=8, layers_per_block=1, decoder_norm_num_groups=0
    ),
}


def vae_preset_names() -> list[str]:
    return sorted(_PRESETS)


def vae_preset(name: str) -> VAEConfig:
    """The preset config with exactly this name."""
    if name not in _PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; choose one of {vae_preset_names()}")
    return _PRESETS[name]
