"""Input embedders of the HunyuanVideo DiT and its 3D rotary position table.

Module and parameter names follow the official HunyuanVideo code so that its checkpoints load
with strict key matching (`mlp.0`/`mlp.2`, `in_layer`/`out_layer`, `linear_1`/`linear_2`, `proj`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), cos half first, as the official code / diffusers'
    `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar (timestep or guidance*1000) through a SiLU MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = timestep_embedding(t, self.freq_dim).to(next(self.mlp.parameters()).dtype)  # (B, freq_dim)
        out: torch.Tensor = self.mlp(freqs)  # (B, hidden)
        return out


class MLPEmbedder(nn.Module):
    """The pooled text vector (CLIP) -> hidden; official name `vector_in`."""

    def __init__(self, in_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_size)
        self.out_layer = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """Pooled text states -> hidden inside the token refiner; official name `c_embedder`."""

    def __init__(self, in_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 3D patches of the latent video -> tokens; official name `img_in`."""

    def __init__(self, patch_size: Sequence[int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        patch = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, t, h, w) on the patched grid
        return rearrange(x, "b d t h w -> b (t h w) d")
