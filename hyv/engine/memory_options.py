"""The words of the memory options, without torch: what `PipelineOptions` takes and what the
service's settings check before any worker loads a model (the API imports the settings and never
torch).

- `TextEncoderPlacement`: device (kept on the device), offload (kept on the CPU, moved to the device
  to encode each prompt), cpu (runs on the CPU; only its embeddings move).
- `ATTENTION_BACKENDS` / `attention_backend_name`: the names `hyv.kernels.attention` accepts.
  `hyv.kernels` imports torch when imported, so its names are repeated here; a test checks that the
  two agree on every name.
- `VAETileSizes`: VAE decode tiles given in part; the rest are the VAE's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from hyv.models import VAETiling

TextEncoderPlacement = Literal["device", "offload", "cpu"]
TEXT_ENCODER_PLACEMENTS: tuple[str, ...] = get_args(TextEncoderPlacement)

AUTO_BACKEND = "auto"
ATTENTION_BACKENDS = ("fa3", "fa2", "xformers", "sdpa")  # = hyv.kernels.attention.BACKENDS
ATTENTION_BACKEND_ALIASES = {  # = hyv.kernels.attention._ALIASES
    "flash3": "fa3",
    "flash_attn_3": "fa3",
    "flash_attn_interface": "fa3",
    "flash2": "fa2",
    "flash": "fa2",
    "flash_attn": "fa2",
    "xformer": "xformers",
    "torch": "sdpa",
}


def attention_backend_name(name: str | None) -> str | None:
    """The canonical backend name for `name` (aliases accepted); None for automatic (None, "" or
    "auto"). ValueError names the choices."""
    if name is None:
        return None
    key = name.strip().lower()
    if key in ("", AUTO_BACKEND):
        return None
    key = ATTENTION_BACKEND_ALIASES.get(key, key)
    if key not in ATTENTION_BACKENDS:
        choices = ", ".join((AUTO_BACKEND, *ATTENTION_BACKENDS))
        raise ValueError(f"unknown attention backend {name!r}; choose one of {choices}")
    return key


@dataclass(frozen=True)
class VAETileSizes:
    """VAE decode tiles in part: each field left None keeps the VAE's own value (its config's
    tile_sample_size, tile_sample_frames, tile_overlap). Smaller tiles need less memory to decode and
    stream their first frames sooner; tiles are blended over `overlap`, so the video changes a little."""

    sample_size: int | None = None  # spatial tile edge, pixels (a multiple of the VAE's 8x)
    sample_frames: int | None = None  # temporal tile length, frames (a multiple of the VAE's 4x)
    overlap: float | None = None  # fraction of a tile shared with its neighbour, in [0, 1)

    def __post_init__(self) -> None:
        for name in ("sample_size", "sample_frames"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"VAE tile {name} must be a positive int, got {value!r}")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"VAE tile overlap must be in [0, 1), got {self.overlap!r}")

    def is_default(self) -> bool:
        return self.sample_size is None and self.sample_frames is None and self.overlap is None

    def apply(self, base: VAETiling) -> VAETiling:
        """`base` (the VAE's own tiling) with the fields given here; ValueError (VAETiling's check)
        when the result does not fit the VAE's compression ratios."""
        changes = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }
        try:
            return dataclasses.replace(base, **changes)
        except ValueError as exc:
            raise ValueError(f"VAE tiles {changes} do not fit this VAE: {exc}") from exc
