"""Tiled vs untiled decode/encode of a trained tiny CausalVAE3D (the committed fixture).

`tests/fixtures/tiny_vae/` is the `tiny` preset trained by `tests/fixtures/make_tiny_vae.py`
(untiled L1 + KL reconstruction, then HunyuanVideo's last VAE phase: a fine-tune that switches
tiling on and off at random, so the decoder copes with per-tile GroupNorm statistics; see the
README there). A held-out clip of the training distribution (different seed) is encoded untiled
(posterior mode) and decoded with the real tiled path, spatial AND temporal tiles with overlap
0.25, then compared with the untiled decode.

Read the numbers together: the fixture's reconstruction is still bland (~15-17 dB on these clips:
the tiny preset learnt little beyond coarse colour in its CPU budget), and a bland output makes the
tiled-vs-untiled PSNR easier. The tiling fine-tune is what moved it (fixture README: 30.2 dB on a
64 px clip with 32 px tiles after the reconstruction phase -> 38.5 dB after the fine-tune; 41.2-44.8
dB on seven 128 px clips with this test's geometry), not the blandness alone.

Random weights give ~15 dB (every tile normalises with its own statistics); that number is
printed as a reference, with only a sanity bound (no misplaced or missing tiles).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hyv.models import CausalVAE3D, VAETiling, load_vae, vae_preset
from tests.fixtures.make_tiny_vae import held_out_clip, psnr

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_vae"
# 128 px x 17 frames -> latents 16 x 16 x 5; tiles of 8 latent px every 6 (3 x 3 spatial tiles) and
# 4 latent frames every 3 (2 temporal tiles: latent frames 0-4 and 3-4).
SIZE, FRAMES = 128, 17
TILING = VAETiling(sample_size=64, sample_frames=16, overlap=0.25)
TEST_SEED = 20_000  # neither a training seed nor the fixture's own held-out evaluation seed
# Measured bounds with margin (fixture README): reconstruction 17.3 dB, tiled latents 39.8 dB here.
RECON_MIN = 14.0
ENCODE_MIN = 35.0


def tiled_vs_untiled(vae: CausalVAE3D, x: torch.Tensor) -> dict[str, float]:
    """Untiled encode (mode) -> tiled and untiled decode; tiled encode; decoder tile shapes checked."""
    shapes: list[tuple[int, ...]] = []
    handle = vae.decoder.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[2:])))
    try:
        with torch.no_grad():
            z = vae.encode(x, tiled=False).mode()  # (1, 16, 5, 16, 16)
            full = vae.decode(z, tiled=False)
            shapes.clear()
            tiled = vae.decode(z, tiled=True, tiling=TILING)
            tile_shapes = list(shapes)
            z_tiled = vae.encode(x, tiled=True, tiling=TILING).mode()
    finally:
        handle.remove()
    assert tiled.shape == full.shape == x.shape and z_tiled.shape == z.shape
    # Both tilings really ran: 2 time tiles (5 and 2 latent frames; the second one's first frame is
    # dropped) x 3 x 3 spatial tiles of at most 8 latent px on the 16 px latent frame.
    assert sorted({s[0] for s in tile_shapes}) == [2, 5]
    assert max(max(s[1], s[2]) for s in tile_shapes) == TILING.latent_size < z.shape[-1]
    assert len(tile_shapes) == 2 * 3 * 3
    return {
        "recon": psnr(full, x),
        "decode": psnr(tiled, full),
        "encode": psnr(z_tiled, z, peak=(z.max() - z.min()).item()),
        "tiles": len(tile_shapes),
    }


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return held_out_clip(FRAMES, SIZE, seed=TEST_SEED)  # (1, 3, 17, 128, 128) in [-1, 1]


def test_tiled_vs_untiled_psnr_trained_tiny(clip: torch.Tensor) -> None:
    vae = load_vae(FIXTURE)
    assert vae.config == vae_preset("tiny")
    start = time.perf_counter()
    r = tiled_vs_untiled(vae, clip)
    print(
        f"trained tiny fixture, {SIZE} px x {FRAMES} frames, tiles {TILING.sample_size} px / "
        f"{TILING.sample_frames} frames, overlap {TILING.overlap}, {r['tiles']} decoder tiles: "
        f"reconstruction PSNR {r['recon']:.1f} dB, tiled-vs-untiled decode PSNR {r['decode']:.1f} dB, "
        f"tiled-vs-untiled latent PSNR (peak = latent range) {r['encode']:.1f} dB "
        f"({time.perf_counter() - start:.1f} s)"
    )
    assert r["recon"] >= RECON_MIN
    assert r["decode"] >= 40.0
    assert r["encode"] >= ENCODE_MIN


def test_tiled_vs_untiled_psnr_random_tiny(clip: torch.Tensor) -> None:
    """Reference only: the untrained preset (per-tile statistics dominate); sanity bound."""
    torch.manual_seed(0)
    r = tiled_vs_untiled(CausalVAE3D(vae_preset("tiny")).eval(), clip)
    print(f"random tiny: tiled-vs-untiled decode PSNR {r['decode']:.1f} dB, latent PSNR {r['encode']:.1f} dB")
    assert r["decode"] > 10 and r["encode"] > 10
