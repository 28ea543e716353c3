"""The single entry points the model blocks call for their memory-bound ops and attention.

Every block in models/ reaches attention, RMSNorm, rotary embedding and adaLN modulation only
through these functions, so faster implementations (kernels/) plug in here without touching
the blocks. The bodies below are plain PyTorch and are the numerical reference.

Layout convention: attention tensors are (B, L, H, D) - batch, sequence, heads, head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, L, H, D) tensors.

    key_padding_mask: (B, Lk) bool, True where the key is a real token. Padded keys get no weight,
    so padded text tokens cannot influence any output. Returns (B, Lq, H, D).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}")
    attn_mask = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (k.shape[0], k.shape[1]):
            expected = (k.shape[0], k.shape[1])
            raise ValueError(
                f"key_padding_mask shape {tuple(key_padding_mask.shape)} != (B, Lk) = {expected}"
            )
        attn_mask = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Lk)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),  # (B, H, Lq, D)
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=attn_mask,
    )
    return out.transpose(1, 2)  # (B, Lq, H, D)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with fp32 statistics; output in x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = normed.to(x.dtype)
    return out * weight if weight is not None else out


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HunyuanVideo's rotary embedding on x (B, L, H, D) with cos/sin tables (L, D).

    The head dim is read as D/2 interleaved pairs (a, b) -> (a*cos - b*sin, b*cos + a*sin); each
    frequency appears twice in a row in the tables. Computed in fp32, returned in x's dtype.
    """
    if cos.shape != (x.shape[1], x.shape[3]) or sin.shape != cos.shape:
        raise ValueError(f"rope tables {tuple(cos.shape)} do not match x (L, D) = {(x.shape[1], x.shape[3])}")
    x32 = x.float()
    a, b = x32.unflatten(-1, (-1, 2)).unbind(-1)  # (B, L, H, D/2) each
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)  # (B, L, H, D): (-b, a) pairs
    cos_ = cos.float()[None, :, None, :]  # (1, L, 1, D)
    sin_ = sin.float()[None, :, None, :]
    return (x32 * cos_ + rotated * sin_).to(x.dtype)


def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """LayerNorm without affine, then adaLN modulation x * (1 + scale) + shift.

    x: (B, L, D); shift, scale: (B, D).
    """
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + scale[:, None, :]) + shift[:, None, :]


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y with gate (B, D) broadcast over the sequence of x, y (B, L, D)."""
    return x + gate[:, None, :] * y
