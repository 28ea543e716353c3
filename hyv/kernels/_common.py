"""Shared plumbing for the fused kernels: lazy Triton import, dispatch rules, the global switch,
launch counters (so tests can prove the Triton path ran) and the row-layout helpers.

Why lazy: `triton.jit` reads TRITON_INTERPRET when a kernel is *decorated*, and triton is absent
on macOS / aarch64 wheels. So no module here imports triton at import time; each op module builds
its kernels on first use through `lazy_kernels`, and `import kernels` always works.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

logger = logging.getLogger(__name__)

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_fused_enabled: bool = os.environ.get("HYV_FUSED_KERNELS", "1").strip() != "0"

# Number of Triton launches per op name; tests assert on it to show the kernels (not the
# fallback) produced the numbers they checked.
LAUNCHES: Counter[str] = Counter()

T = TypeVar("T")


class LaunchRecorder(Protocol):
    """Receives each launcher's kernels (whatever its lazy builder returns) and hands back
    stand-ins whose `[grid](*args, **kwargs)` records the launch instead of running it."""

    def wrap(self, kernels: T) -> T: ...


# While a recorder is installed (hyv.kernels.aot.record_launches), meta tensors take the fused path
# too and every launch goes to the recorder: that is how the exact launch arguments at the 13B's
# sizes are read without a GPU (ahead-of-time compilation, int32-overflow checks).
_recorder: LaunchRecorder | None = None


def set_fused_enabled(enabled: bool) -> None:
    """Turn the fused (Triton) path on or off process-wide; off = the PyTorch references."""
    global _fused_enabled
    _fused_enabled = bool(enabled)


def fused_enabled() -> bool:
    """Whether the fused path may be used (default from env HYV_FUSED_KERNELS, "0" disables)."""
    return _fused_enabled


@functools.cache
def triton_available() -> bool:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        logger.info("triton unavailable (%s); kernels fall back to the PyTorch references", exc)
        return False
    return True


def interpret_mode() -> bool:
    """TRITON_INTERPRET=1: the Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def set_launch_recorder(recorder: LaunchRecorder | None) -> LaunchRecorder | None:
    """Install a launch recorder (None removes it); returns the one it replaces."""
    global _recorder
    previous, _recorder = _recorder, recorder
    return previous


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The dispatch rule: fused on, triton importable, supported dtypes, and either all tensors on
    CUDA or (interpreter mode and all on CPU), or all on meta while a launch recorder is installed."""
    if not _fused_enabled or not triton_available():
        return False
    ts = [t for t in tensors if t is not None]
    if not ts or any(t.dtype not in FUSED_DTYPES for t in ts):
        return False
    device = ts[0].device
    if any(t.device != device for t in ts):
        return False
    if device.type == "cuda":
        return True
    if device.type == "meta":
        return _recorder is not None
    return device.type == "cpu" and interpret_mode()


def lazy_kernels(build: Callable[[], T]) -> Callable[[], T]:
    """Cache a kernel-building function: called on first launch, so `@triton.jit` runs after the
    environment (TRITON_INTERPRET) is final. Changing TRITON_INTERPRET after the first launch has
    no effect on already built kernels. While a launch recorder is installed, the kernels come
    wrapped by it."""
    built = functools.cache(build)

    @functools.wraps(build)
    def get() -> T:
        kernels = built()
        return kernels if _recorder is None else _recorder.wrap(kernels)

    return get


def max_programs(device: torch.device) -> int:
    """Programs for persistent (grid-stride) backward kernels, which write one fp32 partial sum
    per program: a few waves on a GPU, a handful in the interpreter (each program is Python)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def rows_per_program(block_d: int, target: int = 4096) -> int:
    """Rows per tile so a tile holds ~`target` elements: small hidden sizes (qk-norm, D=128) get
    many rows per program instead of one tiny program per row."""
    return max(1, min(64, target // block_d))


def row_layout(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """Describe x (..., D) as rows indexed by up to 3 leading dims, with their strides in elements.

    Views like q = qkv[:, :, 0] (B, L, H, D) from a fused projection are read in place. Tensors
    with more than 3 leading dims or a non-unit last stride are copied (one extra read+write of
    x; the model never produces them).
    Returns (x_or_copy, sizes (S0, S1, S2), strides (st0, st1, st2)); row r = (i0*S1 + i1)*S2 + i2.
    """
    if x.ndim > 4 or x.stride(-1) != 1:
        x = x.contiguous()
    lead = list(x.shape[:-1])
    strides = list(x.stride()[:-1])
    while len(lead) < 3:
        lead.insert(0, 1)
        strides.insert(0, 0)
    return x, (lead[0], lead[1], lead[2]), (strides[0], strides[1], strides[2])


def count_launch(name: str) -> None:
    LAUNCHES[name] += 1
