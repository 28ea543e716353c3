"""The whole tiny DiT with the fused path on (Triton kernels, under the interpreter on CPU) against
the same model with the fused path off (the pure-PyTorch references)."""

from __future__ import annotations

import pytest
import torch

from hyv import kernels
from hyv.models import HunyuanVideoDiT, dit_preset


@pytest.mark.usefixtures("fused")
@pytest.mark.parametrize("image_condition", [None, "latent_concat"])
def test_tiny_dit_fused_matches_reference(image_condition: str | None) -> None:
    torch.manual_seed(0)
    config = dit_preset("tiny").replace(image_condition=image_condition)
    model = HunyuanVideoDiT(config).eval()
    for param in model.parameters():  # no zero-initialized layers: every op must matter
        param.data.normal_(0.0, 0.2)
    x = torch.randn(2, config.in_channels, 3, 4, 6)  # (B, C, T, H, W) -> 3x2x3 patches
    timestep = torch.tensor([900.0, 250.0])
    text = torch.randn(2, 5, config.text_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = torch.randn(2, config.pooled_dim)
    guidance = torch.tensor([6000.0, 3000.0])

    before = dict(kernels.LAUNCHES)
    with torch.no_grad():
        fused = model(x, timestep, text, mask, pooled, guidance)
    launched = {name: kernels.LAUNCHES[name] - before.get(name, 0) for name in kernels.LAUNCHES}
    assert sum(launched.values()) > 0, "the Triton kernels did not run"

    kernels.set_fused_enabled(False)
    try:
        with torch.no_grad():
            reference = model(x, timestep, text, mask, pooled, guidance)
    finally:
        kernels.set_fused_enabled(True)
    diff = (fused - reference).abs().max().item()
    print(f"tiny DiT ({image_condition}) fused vs reference: max abs diff {diff:.2e}; launches {launched}")
    assert diff <= 2e-5 * max(1.0, reference.abs().max().item())
