"""The HunyuanVideo DiT blocks: double-stream (MMDiT), single-stream, and the final layer.

Shapes: video tokens (B, Li, D), text tokens (B, Lt, D), conditioning vector (B, D); the RoPE
tables (Li, Dh) rotate the video tokens only. Attention, RMSNorm, RoPE and adaLN modulation go
through `hyv.models.ops` so fused kernels can replace them without touching this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from hyv.models import ops
from hyv.models.fp8 import linear_rows
from hyv.models.token_refiner import MLP


class RMSNorm(nn.Module):
    """Per-head QK RMSNorm with a learned scale (official `*_q_norm` / `*_k_norm`)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class Modulation(nn.Module):
    """SiLU -> Linear producing `factor` (B, D) modulation vectors (official `ModulateDiT`)."""

    def __init__(self, hidden_size: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(hidden_size, factor * hidden_size)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.linear(F.silu(vec)).chunk(self.factor, dim=-1))


def qk_norm(
    q: torch.Tensor, k: torch.Tensor, q_norm: RMSNorm, k_norm: RMSNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both QK RMSNorms in one fused call."""
    return ops.rms_norm_qk(q, k, q_norm.weight, k_norm.weight, q_norm.eps)


class DoubleStreamBlock(nn.Module):
    """Separate weights for video and text, one joint attention over [video; text]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm_eps: float = 1e-6) -> None:
        super().__init__()
        head_dim = hidden_size // num_heads
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads

        self.img_mod = Modulation(hidden_size, 6)
        self.img_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.img_attn_q_norm = RMSNorm(head_dim, qk_norm_eps)
        self.img_attn_k_norm = RMSNorm(head_dim, qk_norm_eps)
        self.img_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.img_mlp = MLP(hidden_size, mlp_hidden)

        self.txt_mod = Modulation(hidden_size, 6)
        self.txt_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.txt_attn_q_norm = RMSNorm(head_dim, qk_norm_eps)
        self.txt_attn_k_norm = RMSNorm(head_dim, qk_norm_eps)
        self.txt_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.txt_mlp = MLP(hidden_size, mlp_hidden)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)  # 6 x (B, D)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)

        img_qkv = self.img_attn_qkv(ops.layernorm_modulate(img, i_shift1, i_scale1, 1e-6))  # (B, Li, 3D)
        img_q, img_k, img_v = rearrange(
            img_qkv, "b l (three h d) -> three b l h d", three=3, h=self.num_heads
        )
        img_q, img_k = qk_norm(img_q, img_k, self.img_attn_q_norm, self.img_attn_k_norm)
        img_q, img_k = ops.apply_rotary_emb_qk(img_q, img_k, cos, sin)  # (B, Li, H, Dh)

        txt_qkv = self.txt_attn_qkv(ops.layernorm_modulate(txt, t_shift1, t_scale1, 1e-6))  # (B, Lt, 3D)
        txt_q, txt_k, txt_v = rearrange(
            txt_qkv, "b l (three h d) -> three b l h d", three=3, h=self.num_heads
        )
        txt_q, txt_k = qk_norm(txt_q, txt_k, self.txt_attn_q_norm, self.txt_attn_k_norm)  # (B, Lt, H, Dh)

        q = torch.cat([img_q, txt_q], dim=1)  # (B, Li+Lt, H, Dh)
        k = torch.cat([img_k, txt_k], dim=1)
        v = torch.cat([img_v, txt_v], dim=1)
        attn = rearrange(ops.attention(q, k, v, key_padding_mask=key_mask), "b l h d -> b l (h d)")
        img_attn, txt_attn = attn[:, : img.shape[1]], attn[:, img.shape[1] :]  # (B, Li, D), (B, Lt, D)

        img = ops.gated_residual(img, i_gate1, self.img_attn_proj(img_attn))
        img = ops.gated_residual(img, i_gate2, self.img_mlp(ops.layernorm_modulate(img, i_shift2, i_scale2)))
        txt = ops.gated_residual(txt, t_gate1, self.txt_attn_proj(txt_attn))
        txt = ops.gated_residual(txt, t_gate2, self.txt_mlp(ops.layernorm_modulate(txt, t_shift2, t_scale2)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Shared weights over the joint [video; text] sequence; attention and MLP run in parallel
    from one input projection (`linear1` = qkv + mlp-in) and merge in one output projection."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm_eps: float = 1e-6) -> None:
        super().__init__()
        head_dim = hidden_size // num_heads
        self.hidden_size = hidden_size
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps)
        self.k_norm = RMSNorm(head_dim, qk_norm_eps)
        self.modulation = Modulation(hidden_size, 3)

    def forward(
        self,
        x: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, Li+Lt, D) with the video tokens first; rope tables cover the video tokens."""
        shift, scale, gate = self.modulation(vec)  # 3 x (B, D)
        h = ops.layernorm_modulate(x, shift, scale, 1e-6)  # (B, L, D)
        # linear1 is one (3D + M, D) weight; two matmuls over its row blocks (free views) give a
        # contiguous MLP half, so the GELU below runs on dense memory instead of a strided slice.
        # linear_rows takes linear1 as an nn.Linear or quantized (hyv.models.fp8).
        split = 3 * self.hidden_size
        qkv = linear_rows(self.linear1, h, 0, split)  # (B, L, 3D)
        mlp = linear_rows(self.linear1, h, split, split + self.mlp_hidden)  # (B, L, M)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=self.num_heads)
        q, k = qk_norm(q, k, self.q_norm, self.k_norm)
        # The tables cover the video tokens (the prefix); the text tokens pass through unrotated.
        q, k = ops.apply_rotary_emb_qk(q, k, cos, sin)  # (B, L, H, Dh)
        attn = rearrange(ops.attention(q, k, v, key_padding_mask=key_mask), "b l h d -> b l (h d)")
        out = self.linear2(torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=-1))  # (B, L, D)
        return ops.gated_residual(x, gate, out)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear to patch_volume * out_channels per token."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        # Official order of the two halves is (shift, scale); diffusers stores (scale, shift).
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)  # (B, D) each
        return self.linear(ops.layernorm_modulate(x, shift, scale, 1e-6))  # (B, L, p*C)
