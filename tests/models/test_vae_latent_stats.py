"""The VAE <-> DiT latent map: one global scaling factor, or per-channel statistics (Wan-style)."""

from __future__ import annotations

import json

import pytest
import torch

from hyv.models import (
    CausalVAE3D,
    VAEConfig,
    from_dit_latents,
    load_vae,
    save_vae,
    to_dit_latents,
    vae_preset,
)

MEAN = tuple(0.1 * c - 0.5 for c in range(16))
STD = tuple(0.2 + 0.1 * c for c in range(16))


def test_global_map_is_the_scaling_factor() -> None:
    config = vae_preset("tiny")
    z = torch.randn(2, 16, 3, 4, 5)
    torch.testing.assert_close(to_dit_latents(z, config), z * config.scaling_factor)
    torch.testing.assert_close(from_dit_latents(to_dit_latents(z, config), config), z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_per_channel_map_standardizes_each_channel_and_inverts(dtype: torch.dtype) -> None:
    config = vae_preset("tiny").replace(latents_mean=MEAN, latents_std=STD)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    z = (torch.randn(64, 16, 2, 4, 4) * std.view(1, 16, 1, 1, 1) + mean.view(1, 16, 1, 1, 1)).to(dtype)
    x = to_dit_latents(z, config)
    assert x.dtype == dtype and x.shape == z.shape
    per_channel = x.float().transpose(0, 1).reshape(16, -1)
    assert per_channel.mean(dim=1).abs().max() < 0.1  # every channel centred ...
    assert (per_channel.std(dim=1) - 1).abs().max() < 0.1  # ... at unit spread
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    torch.testing.assert_close(from_dit_latents(x, config), z, atol=tol, rtol=tol)
    image = z[:, :, :1]  # a 1-frame latent maps the same way
    torch.testing.assert_close(to_dit_latents(image, config), x[:, :, :1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"latents_mean": MEAN}, "together"),
        ({"latents_std": STD}, "together"),
        ({"latents_mean": MEAN[:15], "latents_std": STD}, "latents_mean must hold 16"),
        ({"latents_mean": MEAN, "latents_std": (*STD[:15], 0.0)}, "latents_std must be positive"),
        ({"latents_mean": (*MEAN[:15], float("nan")), "latents_std": STD}, "finite"),
    ],
)
def test_bad_latent_statistics_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vae_preset("tiny").replace(**changes)


def test_statistics_round_trip_through_a_saved_vae(tmp_path: object) -> None:
    config = vae_preset("tiny").replace(latents_mean=MEAN, latents_std=STD)
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    directory = save_vae(CausalVAE3D(config), tmp_path / "vae")  # type: ignore[operator]
    loaded = load_vae(directory)
    assert loaded.config.latents_mean == pytest.approx(MEAN)
    assert loaded.config.latents_std == pytest.approx(STD)
