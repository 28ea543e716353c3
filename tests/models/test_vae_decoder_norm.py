"""`VAEConfig.decoder_norm_num_groups`: a GroupNorm decoder cannot paint a flat frame in the color its
latent encodes (the group statistics span the whole clip), one without normalization can."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hyv.models import CausalVAE3D
from hyv.models.vae_config import VAEConfig, vae_preset


def _flat_color_fit(config: VAEConfig, steps: int = 150) -> float:
    """MSE after training the decoder alone to turn proj(color), broadcast over a 2x2 latent, into the
    flat 16x16 frame of that color (the optimum is 0; predicting the mean color gives ~0.33)."""
    torch.manual_seed(0)
    vae = CausalVAE3D(config)
    proj = torch.randn(config.latent_channels, 3)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=5e-4)
    losses = []
    for _ in range(steps):
        colors = torch.rand(8, 3) * 2 - 1
        frames = colors[:, :, None, None, None].expand(8, 3, 1, 16, 16)  # (B, 3, T, H, W)
        latents = (colors @ proj.T)[:, :, None, None, None].expand(8, config.latent_channels, 1, 2, 2)
        loss = (vae.decode(latents.contiguous(), tiled=False) - frames).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


@pytest.mark.slow  # trains two small decoders (~13 s on 2 cores)
def test_group_norm_decoder_cannot_paint_flat_colors_and_none_can() -> None:
    grouped = vae_preset("small")
    flat = vae_preset("small-flat")
    assert flat.decoder_groups == 0 and grouped.decoder_groups == grouped.norm_num_groups == 8
    with_norm, without = _flat_color_fit(grouped), _flat_color_fit(flat)
    assert with_norm > 0.15, with_norm  # stuck near the mean color
    assert without < 0.03, without
    assert without < with_norm / 8


def test_decoder_without_norm_has_no_group_norm_and_the_encoder_keeps_it() -> None:
    vae = CausalVAE3D(vae_preset("small-flat"))
    assert not any(isinstance(m, nn.GroupNorm) for m in vae.decoder.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in vae.encoder.modules())
    # The official layout is unchanged: every norm of both halves is a GroupNorm of the config's groups.
    official = CausalVAE3D(vae_preset("tiny"))
    norms = [m for m in official.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 4 for m in norms)


def test_config_round_trip_and_validation() -> None:
    config = vae_preset("small-flat")
    assert VAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="decoder_norm_num_groups"):
        dataclasses.replace(config, decoder_norm_num_groups=-1)
    with pytest.raises(ValueError, match="decoder_norm_num_groups=3"):
        dataclasses.replace(config, decoder_norm_num_groups=3)
