"""One attention entry point over (B, L, H, D) with pluggable backends.

Backends: "fa3" (flash_attn_interface, Hopper), "fa2" (flash_attn), "xformers"
(memory_efficient_attention) and "sdpa" (torch). Auto choice: the first installed backend usable
for the tensors (flash needs CUDA + fp16/bf16), else SDPA. Override with env HYV_ATTENTION_BACKEND
or `set_attention_backend(name)`, or per call with `backend=`; an override that cannot run raises
ValueError naming the backend and why. The choice is logged once (INFO) per configuration.

Key padding. The joint sequence is [video; valid text; padded text] per sample. The varlen
backends never see the padding: the tokens are packed (padded ones dropped; cu_seqlens int32,
max_seqlen), attended, and unpacked to (B, L, H, D) with ZEROS at padded query positions. SDPA
uses a boolean mask instead and returns attention-over-valid-keys there (as models/ops.attention
does). So outputs agree across backends only at valid query positions; padded rows are undefined.
That is safe for the DiT: padded text rows only ever act as keys/values, which the mask excludes,
so they never reach a valid token, and the final layer reads the video tokens only.
When Lq == Lk (self-attention) the key mask is also the query padding; otherwise queries are
all treated as valid.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("fa3", "fa2", "xformers", "sdpa")
_ALIASES = {
    "flash3": "fa3",
    "flash_attn_3": "fa3",
    "flash_attn_interface": "fa3",
    "flash2": "fa2",
    "flash": "fa2",
    "flash_attn": "fa2",
    "xformer": "xformers",
    "torch": "sdpa",
}
_MODULES = {"fa3": "flash_attn_interface", "fa2": "flash_attn", "xformers": "xformers.ops"}

_override: str | None = None
_logged: set[tuple[str, str, str]] = set()


def canonical_backend(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return key


@functools.cache
def _import_error(name: str) -> str | None:
    """None if the backend's package imports, else why not."""
    if name == "sdpa":
        return None
    try:
        importlib.import_module(_MODULES[name])
    except Exception as exc:  # ImportError, or a build mismatch raising OSError/RuntimeError
        return (
            f"package {_MODULES[name]!r} is not installed or failed to import ({type(exc).__name__}: {exc})"
        )
    return None


def available_backends() -> list[str]:
    """Backends whose packages import here (whether they suit a given tensor is checked per call)."""
    return [b for b in BACKENDS if _import_error(b) is None]


def _unusable_reason(name: str, q: torch.Tensor) -> str | None:
    """None if `name` can run on tensors like q, else why not."""
    err = _import_error(name)
    if err is not None or name == "sdpa":
        return err
    if q.device.type != "cuda":
        return f"it needs CUDA tensors, got device {q.device}"
    if name in ("fa3", "fa2") and q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash attention needs fp16/bf16, got {q.dtype}"
    if name in ("fa3", "fa2") and (q.shape[-1] > 256 or q.shape[-1] % 8):
        return f"flash attention needs head dim <= 256 and a multiple of 8, got {q.shape[-1]}"
    if name == "fa3" and torch.cuda.get_device_capability(q.device)[0] < 9:
        return "FlashAttention-3 needs a Hopper (sm90+) GPU"
    return None


def set_attention_backend(name: str | None) -> None:
    """Force a backend process-wide (None: back to env / automatic). Raises ValueError if the
    name is unknown or its package is not installed."""
    global _override
    if name is None:
        _override = None
        return
    key = canonical_backend(name)
    err = _import_error(key)
    if err is not None:
        raise ValueError(f"attention backend {key!r} is unavailable: {err}")
    _override = key


def get_attention_backend() -> str | None:
    """The forced backend (set_attention_backend, else HYV_ATTENTION_BACKEND), None for automatic."""
    if _override is not None:
        return _override
    env = os.environ.get("HYV_ATTENTION_BACKEND", "").strip()
    return canonical_backend(env) if env and env.lower() != "auto" else None


def select_backend(q: torch.Tensor, backend: str | None = None) -> str:
    requested = canonical_backend(backend) if backend else get_attention_backend()
    if requested is not None:
        reason = _unusable_reason(requested, q)
        if reason is not None:
            raise ValueError(f"attention backend {requested!r} cannot run here: {reason}")
        chosen, how = requested, "requested"
    else:
        chosen = next(b for b in BACKENDS if _unusable_reason(b, q) is None)  # sdpa always qualifies
        how = "auto"
    key = (chosen, q.device.type, str(q.dtype))
    if key not in _logged:
        _logged.add(key)
        logger.info("attention backend %s (%s) for %s %s; installed: %s", chosen, how, q.device.type,
                    q.dtype, ", ".join(available_backends()))  # fmt: skip
    return chosen


# ---------------------------------------------------------------------------------------------
# Packing: pure PyTorch, differentiable (index_select / index_copy), tested on CPU.


@dataclass(frozen=True)
class VarlenMeta:
    indices: torch.Tensor  # (N,) int64 positions of valid tokens in the flattened (B*L)
    cu_seqlens: torch.Tensor  # (B+1,) int32 prefix sums of valid lengths
    max_seqlen: int
    seqlens: list[int]  # host copy (xformers' BlockDiagonalMask wants Python ints)


_meta_cache: tuple[torch.Tensor, int, VarlenMeta] | None = None


def varlen_meta(mask: torch.Tensor) -> VarlenMeta:
    """Metadata for a (B, L) bool key mask. The host sync (.tolist) happens once per mask: the
    last mask object is kept (so its memory cannot be reused by a different mask) and, while it
    is unmodified (same _version), every block of a forward pass reuses its metadata."""
    global _meta_cache
    if _meta_cache is not None and _meta_cache[0] is mask and _meta_cache[1] == mask._version:
        return _meta_cache[2]
    m = mask.to(torch.bool)
    seqlens_t = m.sum(dim=1, dtype=torch.int32)  # (B,)
    cu = F.pad(torch.cumsum(seqlens_t, 0, dtype=torch.int32), (1, 0))  # (B+1,)
    indices = torch.nonzero(m.reshape(-1), as_tuple=False).flatten()  # (N,)
    seqlens = [int(s) for s in seqlens_t.tolist()]
    meta = VarlenMeta(indices, cu, max(seqlens) if seqlens else 0, seqlens)
    _meta_cache = (mask, mask._version, meta)
    return meta


def pack_padded(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """x (B, L, H, D), mask (B, L) True = real token -> (packed (N, H, D), cu_seqlens (B+1,) int32,
    max_seqlen, indices (N,) into the flattened B*L)."""
    meta = varlen_meta(mask)
    packed = x.reshape(-1, *x.shape[2:]).index_select(0, meta.indices)  # (N, H, D)
    return packed, meta.cu_seqlens, meta.max_seqlen, meta.indices


def unpack(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of pack_padded: (N, H, D) -> (B, L, H, D) with zeros at the dropped positions."""
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    return out.index_copy(0, indices, packed).view(batch, seqlen, *packed.shape[1:])


def packed_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, *_: Any
) -> torch.Tensor:
    """Varlen attention as a loop of SDPA calls, one per sequence: the oracle for the packed
    path, and a stand-in varlen backend for CPU tests (a VarlenFn: extra args are ignored).
    q (Nq, H, D), k/v (Nk, H, D)."""
    outs = []
    for i in range(cu_q.numel() - 1):
        qs = q[int(cu_q[i]) : int(cu_q[i + 1])].transpose(0, 1)  # (H, Lq_i, D)
        ks = k[int(cu_k[i]) : int(cu_k[i + 1])].transpose(0, 1)
        vs = v[int(cu_k[i]) : int(cu_k[i + 1])].transpose(0, 1)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1))
    return torch.cat(outs, dim=0)


# A varlen function: (q, k, v packed, cu_q, cu_k, max_q, max_k, meta_q, meta_k) -> (Nq, H, D)
VarlenFn = Callable[..., torch.Tensor]


def attention_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor, varlen_fn: VarlenFn
) -> torch.Tensor:
    """Pack, run `varlen_fn`, unpack. Shared by every varlen backend (and the CPU tests)."""
    B, Lq, H, D = q.shape
    kp, cu_k, max_k, _ = pack_padded(k, key_padding_mask)  # (Nk, H, D)
    vp, _, _, _ = pack_padded(v, key_padding_mask)
    meta_k = varlen_meta(key_padding_mask)
    if Lq == k.shape[1]:  # self-attention over the joint sequence: queries padded like keys
        qp, cu_q, max_q, idx_q = pack_padded(q, key_padding_mask)
        meta_q = meta_k
    else:  # keys-only mask: every query is real
        qp = q.reshape(B * Lq, H, D)
        cu_q = torch.arange(0, (B + 1) * Lq, Lq, dtype=torch.int32, device=q.device)
        max_q, idx_q = Lq, None
        meta_q = VarlenMeta(torch.arange(B * Lq, device=q.device), cu_q, Lq, [Lq] * B)
    out = varlen_fn(qp, kp, vp, cu_q, cu_k, max_q, max_k, meta_q, meta_k)  # (Nq, H, D)
    return out.view(B, Lq, H, D) if idx_q is None else unpack(out, idx_q, B, Lq)


def _first(out: Any) -> torch.Tensor:
    # some flash_attn_interface releases return (out, softmax_lse)
    return out[0] if isinstance(out, tuple) else out


def _fa_varlen(module: str) -> VarlenFn:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int, max_k: int, *_: Any) -> torch.Tensor:  # fmt: skip
        fn = importlib.import_module(module).flash_attn_varlen_func
        return _first(fn(q, k, v, cu_q, cu_k, max_q, max_k, causal=False))

    return run


def _xformers_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: Any, cu_k: Any, max_q: int, max_k: int,
    meta_q: VarlenMeta, meta_k: VarlenMeta,
) -> torch.Tensor:  # fmt: skip
    xops = importlib.import_module("xformers.ops")
    bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(
        q_seqlen=meta_q.seqlens, kv_seqlen=meta_k.seqlens
    )
    out: torch.Tensor = xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]
    return out


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Masked SDPA; identical to models/ops.attention (the reference)."""
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
    )
    return out.transpose(1, 2)  # (B, Lq, H, D)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over q (B, Lq, H, D), k/v (B, Lk, H, D); key_padding_mask (B, Lk) True = real.
    Returns (B, Lq, H, D); rows of padded queries are undefined (zeros on varlen backends)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(
            f"key_padding_mask shape {tuple(key_padding_mask.shape)} != (B, Lk) = {(k.shape[0], k.shape[1])}"
        )
    name = select_backend(q, backend)
    if name == "sdpa":
        return attention_sdpa(q, k, v, key_padding_mask)
    if key_padding_mask is None:
        if name == "xformers":
            out: torch.Tensor = importlib.import_module("xformers.ops").memory_efficient_attention(q, k, v)
            return out
        fn = importlib.import_module(_MODULES[name]).flash_attn_func
        return _first(fn(q, k, v, causal=False))
    varlen = _xformers_varlen if name == "xformers" else _fa_varlen(_MODULES[name])
    return attention_varlen(q, k, v, key_padding_mask, varlen)
