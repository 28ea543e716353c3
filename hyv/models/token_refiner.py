"""The text token refiner (official `txt_in` / `SingleTokenRefiner`).

The LLM hidden states are projected to the DiT width and refined by a few self-attention blocks
conditioned (adaLN gates only) on the timestep and the mask-averaged text states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hyv.models import ops
from hyv.models.embeddings import TextProjection, TimestepEmbedder


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (official `MLP`)."""

    def __init__(self, dim: int, hidden: int, approximate_gelu: bool = True, silu: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.silu = silu
        self.approximate = "tanh" if approximate_gelu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = F.silu(h) if self.silu else F.gelu(h, approximate=self.approximate)
        return self.fc2(h)


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio), silu=True)
        # Sequential(SiLU, Linear) so the weight is called `adaLN_modulation.1` as in the official file.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), c (B, D), key_mask (B, L) bool -> (B, L, D)."""
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=-1)  # (B, D) each
        qkv = self.self_attn_qkv(self.norm1(x))  # (B, L, 3D)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=self.num_heads)
        attn = ops.attention(q, k, v, key_padding_mask=key_mask)  # (B, L, H, Dh)
        attn = rearrange(attn, "b l h d -> b l (h d)")
        x = ops.gated_residual(x, gate_msa, self.self_attn_proj(attn))
        return ops.gated_residual(x, gate_mlp, self.mlp(self.norm2(x)))


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [IndividualTokenRefinerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The official refiner always lets every query see key 0, so a prompt whose mask is all
        # zeros (e.g. an empty negative prompt) still yields finite values instead of NaN.
        key_mask = mask.to(torch.bool).clone()  # (B, L)
        key_mask[:, 0] = True
        for block in self.blocks:
            x = block(x, c, key_mask)
        return x


class SingleTokenRefiner(nn.Module):
    """Official `txt_in`: text states (B, L, text_dim) -> refined tokens (B, L, hidden)."""

    def __init__(
        self,
        text_dim: int,
        hidden_size: int,
        num_heads: int,
        depth: int,
        mlp_ratio: float = 4.0,
        freq_dim: int = 256,
    ) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(text_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_dim)
        self.c_embedder = TextProjection(text_dim, hidden_size)
        self.individual_token_refiner = IndividualTokenRefiner(hidden_size, num_heads, depth, mlp_ratio)

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask_f = mask.to(torch.float32).unsqueeze(-1)  # (B, L, 1)
        # Mean over real tokens only; the clamp keeps an all-padding row finite.
        pooled = (text.float() * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp(min=1.0)  # (B, text_dim)
        c = self.t_embedder(timestep) + self.c_embedder(pooled.to(text.dtype))  # (B, D)
        x = self.input_embedder(text)  # (B, L, D)
        out: torch.Tensor = self.individual_token_refiner(x, c, mask)
        return out
