"""Fused kernels for the DiT's memory-bound ops, and the attention backend dispatcher.

Drop-in replacements for hyv/models/ops.py (same signatures and numerics, see each module):

    rms_norm(x, weight, eps)                      rms_norm_qk(q, k, q_weight, k_weight, eps)
    apply_rotary_emb(x, cos, sin)                 apply_rotary_emb_qk(q, k, cos, sin)
    layernorm_modulate(x, shift, scale, eps)      gated_residual(x, gate, y)
    attention(q, k, v, key_padding_mask, backend) rope_tables(t, h, w, axes_dim, theta, device, dtype)

Dispatch: Triton kernels for CUDA tensors, or for CPU tensors when TRITON_INTERPRET=1 (the Triton
interpreter; how CI tests the kernels); the pure-PyTorch `*_reference` functions otherwise, when
triton is not installed, or when `set_fused_enabled(False)` / HYV_FUSED_KERNELS=0.
Importing this package never imports triton (it is loaded on the first kernel launch).
"""

from hyv.kernels._common import LAUNCHES, fused_enabled, set_fused_enabled, triton_available
from hyv.kernels.attention import (
    BACKENDS,
    attention,
    available_backends,
    get_attention_backend,
    pack_padded,
    set_attention_backend,
    unpack,
)
from hyv.kernels.modulate import (
    gated_residual,
    gated_residual_reference,
    layernorm_modulate,
    layernorm_modulate_reference,
)
from hyv.kernels.rms_norm import rms_norm, rms_norm_qk, rms_norm_qk_reference, rms_norm_reference
from hyv.kernels.rope import (
    apply_rotary_emb,
    apply_rotary_emb_qk,
    apply_rotary_emb_qk_reference,
    apply_rotary_emb_reference,
    rope_tables,
)

__all__ = [
    "BACKENDS",
    "LAUNCHES",
    "apply_rotary_emb",
    "apply_rotary_emb_qk",
    "apply_rotary_emb_qk_reference",
    "apply_rotary_emb_reference",
    "attention",
    "available_backends",
    "fused_enabled",
    "gated_residual",
    "gated_residual_reference",
    "get_attention_backend",
    "layernorm_modulate",
    "layernorm_modulate_reference",
    "pack_padded",
    "rms_norm",
    "rms_norm_qk",
    "rms_norm_qk_reference",
    "rms_norm_reference",
    "rope_tables",
    "set_attention_backend",
    "set_fused_enabled",
    "triton_available",
    "unpack",
]
