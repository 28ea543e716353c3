"""Configuration of the HunyuanVideo DiT and its named presets.

The official checkpoint's architecture is fully described by `DiTConfig`; everything that is not
a field (qkv bias, tanh-GELU MLPs, adaLN-Zero modulation, LayerNorm eps 1e-6) is fixed by the
official code and therefore not configurable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

IMAGE_CONDITIONS: tuple[str, ...] = ("latent_concat",)


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of `HunyuanVideoDiT`.

    Image conditioning (`image_condition`):
      * ``None`` - text-to-video; the patch embedder reads `latent_channels` channels.
      * ``"latent_concat"`` - image-to-video as in HunyuanVideo-I2V / diffusers'
        ``image_condition_type="latent_concat"``. The model input is the channel concatenation
        ``[noisy video latent (C), image latent (C), mask (1)]``, so ``in_channels = 2*C + 1``
        (33 for C=16) while the output stays ``C`` channels (the velocity of the noisy latent).
        The image latent holds the VAE latent of the conditioning frame in latent frame 0 and
        zeros elsewhere; the mask is 1 where the image latent is valid. An all-zero image latent
        with an all-zero mask is plain text-to-video, so one checkpoint serves both tasks.
    """

    hidden_size: int = 3072
    num_heads: int = 24
    depth_double: int = 20
    depth_single: int = 40
    mlp_ratio: float = 4.0
    patch_size: tuple[int, int, int] = (1, 2, 2)
    latent_channels: int = 16
    image_condition: str | None = None
    qk_norm_eps: float = 1e-6
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 256.0
    text_dim: int = 4096
    pooled_dim: int = 768
    refiner_depth: int = 2
    timestep_freq_dim: int = 256
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        # Lists arrive from JSON; the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "rope_axes_dim", tuple(int(d) for d in self.rope_axes_dim))
        positive = (
            "hidden_size",
            "num_heads",
            "latent_channels",
            "text_dim",
            "pooled_dim",
            "timestep_freq_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        for name in ("depth_double", "depth_single", "refiner_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"DiTConfig.{name} must be a non-negative int, got {value!r}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"DiTConfig.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if len(self.patch_size) != 3 or any(p <= 0 for p in self.patch_size):
            raise ValueError(f"DiTConfig.patch_size must be 3 positive ints (t, h, w), got {self.patch_size}")
        if len(self.rope_axes_dim) != 3:
            raise ValueError(
                f"DiTConfig.rope_axes_dim must have 3 entries (t, h, w), got {self.rope_axes_dim}"
            )
        if any(d <= 0 or d % 2 for d in self.rope_axes_dim):
            raise ValueError(
                f"DiTConfig.rope_axes_dim entries must be positive and even (cos/sin pairs), "
                f"got {self.rope_axes_dim}"
            )
        if sum(self.rope_axes_dim) != self.head_dim:
            raise ValueError(
                f"DiTConfig.rope_axes_dim={self.rope_axes_dim} sums to {sum(self.rope_axes_dim)}, "
                f"but head_dim = hidden_size / num_heads = {self.head_dim}"
            )
        if self.timestep_freq_dim % 2:
            raise ValueError(f"DiTConfig.timestep_freq_dim must be even, got {self.timestep_freq_dim}")
        if not self.mlp_ratio > 0 or int(self.hidden_size * self.mlp_ratio) <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.image_condition is not None and self.image_condition not in IMAGE_CONDITIONS:
            raise ValueError(
                f"DiTConfig.image_condition={self.image_condition!r} is unknown; "
                f"choose None or one of {list(IMAGE_CONDITIONS)}"
            )
        if not self.rope_theta > 0 or not self.qk_norm_eps > 0:
            raise ValueError(
                f"DiTConfig.rope_theta and qk_norm_eps must be > 0, got {self.rope_theta}, {self.qk_norm_eps}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def in_channels(self) -> int:
        if self.image_condition == "latent_concat":
            return 2 * self.latent_channels + 1
        return self.latent_channels

    @property
    def out_channels(self) -> int:
        return self.latent_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["rope_axes_dim"] = list(self.rope_axes_dim)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DiTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> DiTConfig:
        return dataclasses.replace(self, **changes)


_HUNYUAN_13B = DiTConfig()

DIT_PRESETS: dict[str, DiTConfig] = {
    # The released HunyuanVideo T2V transformer (guidance-distilled, so it has guidance_in).
    "hunyuan-video-13b": _HUNYUAN_13B,
    # HunyuanVideo-I2V (33-channel latent_concat); the release uses real CFG, not a guidance embedding.
    "hunyuan-video-i2v-13b": _HUNYUAN_13B.replace(image_condition="latent_concat", guidance_embed=False),
    # Unit tests: every code path, milliseconds per forward on CPU.
    "tiny": DiTConfig(
        hidden_size=48,
        num_heads=2,
        depth_double=1,
        depth_single=1,
        rope_axes_dim=(8, 8, 8),
        text_dim=32,
        pooled_dim=16,
        refiner_depth=2,
    ),
    # The bundled model, trained on the 2-core CPU machine (~2.7M parameters, fp16 on disk). Hidden
    # 128 rather than 256: the recipe's DiT budget (~1e15 FLOPs) is compute-bound, and a 4x smaller
    # model takes ~2.5x the steps in the same time (docs/training.md, "The experiments behind it").
    "small": DiTConfig(
        hidden_size=128,
        num_heads=2,
        depth_double=2,
        depth_single=4,
        rope_axes_dim=(16, 24, 24),
        image_condition="latent_concat",
        text_dim=128,
        pooled_dim=128,
        refiner_depth=1,
    ),
    # One-GPU training (~44M parameters).
    "medium": DiTConfig(
        hidden_size=384,
        num_heads=6,
        depth_double=4,
        depth_single=8,
        rope_axes_dim=(16, 24, 24),
        image_condition="latent_concat",
        text_dim=256,
        pooled_dim=256,
        refiner_depth=2,
    ),
    # GPU training (~390M parameters), official text-encoder widths.
    "base": DiTConfig(
        hidden_size=1024,
        num_heads=16,
        depth_double=5,
        depth_single=10,
        rope_axes_dim=(16, 24, 24),
        image_condition="latent_concat",
        text_dim=4096,
        pooled_dim=768,
        refiner_depth=2,
    ),
}


def dit_preset(name: str) -> DiTConfig:
    """The preset called exactly `name`."""
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; available presets: {sorted(DIT_PRESETS)}")
    return DIT_PRESETS[name]
