"""`hyv train retention`: held-out clips noised to s, denoised by the model, judged. A DiT that
predicts zero velocity leaves the noised clip as it is, so the curve must fall from the VAE's own
accuracy at small s to about nothing at s = 1, and the noised start must be exactly (1 - s) x0 + s noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hyv.engine.bundle import DEFAULT_BUNDLE_DIR, load_bundle, save_bundle
from hyv.models import HunyuanVideoDiT, to_dit_latents
from hyv.training.data import render_clip
from hyv.training.data.dataset import to_tensor
from hyv.training.eval.retention import (
    RETENTION_FILE,
    RETENTION_PLOT,
    RetentionConfig,
    clean_latents_and_noise,
    noised_latents,
    run_retention,
)
from hyv.training.eval.runner import heldout_items, open_bundle


@pytest.fixture(scope="module")
def still_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled VAE and text encoder with a zero-velocity DiT (adaLN-Zero training init)."""
    torch.set_num_threads(2)
    bundle = load_bundle(DEFAULT_BUNDLE_DIR, dtype=torch.float32)
    dit = HunyuanVideoDiT(bundle.dit.config)
    dit.init_weights()
    bundle.dit = dit
    return save_bundle(bundle, tmp_path_factory.mktemp("still") / "bundle")


def test_noised_start_is_the_flow_interpolation(still_bundle: Path) -> None:
    pipeline = open_bundle(still_bundle, "bundle", "cpu", "fp32")
    items = heldout_items(2)
    truth = [render_clip(it.spec, 17, 64) for it in items]
    start = noised_latents(*clean_latents_and_noise(pipeline, truth, items), 0.3)
    with torch.inference_mode():
        x0 = to_dit_latents(
            pipeline.vae.encode(to_tensor(truth[1])[None], tiled=False).mode(), pipeline.vae.config
        )
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(items[1].noise_seed))
    torch.testing.assert_close(start[1:2], 0.7 * x0 + 0.3 * noise)


def test_zero_velocity_model_keeps_what_it_is_shown_and_nothing_else(
    still_bundle: Path, tmp_path: Path
) -> None:
    config = RetentionConfig(
        bundle=still_bundle, out_dir=tmp_path, sigmas=(0.05, 1.0), steps=4, combinations=6, batch_size=4
    )
    results = run_retention(config)
    assert json.loads((tmp_path / RETENTION_FILE).read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / RETENTION_PLOT).stat().st_size > 10_000
    low, high = results["curve"]
    assert low["sigma"] == 0.05 and low["steps"] == 1  # only sigma 0 of a 4-step schedule lies below 0.05
    assert high["steps"] == 4 and len(high["clips"]) == 6
    assert low["accuracy"]["color"] >= 5 / 6 and low["accuracy"]["shape"] >= 4 / 6  # the clip, barely noised
    assert high["accuracy"]["all"] == 0.0  # decoded pure noise matches no caption


def test_cli_runs_and_rejects_bad_levels(still_bundle: Path, tmp_path: Path) -> None:
    from hyv.cli import app

    runner = CliRunner()
    args = ["train", "retention", "--bundle", str(still_bundle), "--out", str(tmp_path), "--steps", "2"]
    result = runner.invoke(app, [*args, "--sigmas", "0.1", "--combinations", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["plot"].endswith(RETENTION_PLOT)
    bad = runner.invoke(app, [*args, "--sigmas", "0.5,1.5"])
    assert bad.exit_code != 0 and "sigmas must be noise levels in (0, 1]" in bad.output
    missing = runner.invoke(app, ["train", "retention", "--bundle", str(tmp_path / "nope")])
    assert missing.exit_code == 2
