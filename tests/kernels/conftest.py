"""Shared helpers for the kernel tests.

The Triton kernels run on CPU through the interpreter when TRITON_INTERPRET=1 is set for the whole
session (the Makefile does it); `triton.jit` reads it at decoration time, which happens on the first
launch, so setting it here would also work but would hide a misconfigured CI. Tests of the fused
path assert that a kernel launch happened, and skip (with the reason) when neither CUDA nor the
interpreter is available.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from hyv import kernels
from hyv.kernels._common import interpret_mode, triton_available

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# max |fused - fp32 reference| <= TOL * max(1, max |reference|): fp32 is exact up to reduction
# order; bf16/fp16 allow a few units of the output dtype's rounding (8 and 11 mantissa bits).
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fused_skip_reason() -> str | None:
    if not triton_available():
        return "triton is not installed: only the PyTorch fallback can run"
    if DEVICE.type == "cpu" and not interpret_mode():
        return "no CUDA and TRITON_INTERPRET!=1: the Triton kernels cannot run (set TRITON_INTERPRET=1)"
    return None


@pytest.fixture
def fused() -> Iterator[None]:
    """Skip unless the Triton path can run; make sure it is enabled for the test."""
    reason = fused_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    before = kernels.fused_enabled()
    kernels.set_fused_enabled(True)
    yield
    kernels.set_fused_enabled(before)


@pytest.fixture
def unfused() -> Iterator[None]:
    """The fused path switched off: hyv.models.ops must then be exactly the references."""
    before = kernels.fused_enabled()
    kernels.set_fused_enabled(False)
    yield
    kernels.set_fused_enabled(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def assert_close(
    actual: torch.Tensor | None, expected: torch.Tensor | None, dtype: torch.dtype, what: str
) -> None:
    assert actual is not None and expected is not None, what
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{what} ({dtype}): max err {err:.3g} > {TOL[dtype]} * {scale:.3g}"


def launched(name: str) -> int:
    return kernels.LAUNCHES[name]


def upcast(*ts: torch.Tensor) -> list[torch.Tensor]:
    """fp32 leaf copies of the inputs, for the fp32 reference and its gradients."""
    return [t.detach().float().requires_grad_(t.requires_grad) for t in ts]
