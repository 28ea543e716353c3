"""VAE training (hyv/training/vae) on the tiny preset at 16x16: the curriculum's batches, the losses
going down, the saved VAE round-tripping through hyv.models.load_vae, exact resume, the GAN switching
on after its warm-up, and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hyv.models import load_vae
from hyv.models.vae_blocks import ResnetBlockCausal3D
from hyv.training.data.render import render_clip
from hyv.training.vae import VAETrainConfig, VAETrainer, train_vae
from hyv.training.vae.data import VAEBatches, frame_times, phase_name, render_times
from hyv.training.vae.losses import FixedFeatures, PatchDiscriminator3D, perceptual_loss
from hyv.training.vae.trainer import foreground_weight


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # CPU results (and the resume comparison) independent of the machine


def _config(out_dir: Path, **changes: object) -> VAETrainConfig:
    base: dict[str, object] = dict(
        out_dir=out_dir,
        preset="tiny",
        steps=8,
        size=16,
        num_frames=5,
        batch_size=2,
        low_res_size=8,
        low_res_frames=5,
        low_res_batch_size=2,
        crop_size=8,
        crop_fraction=0.0,
        image_phase_fraction=0.0,
        low_res_fraction=0.25,
        tiling_fraction=0.25,
        tiling_probability=1.0,
        tile_size=8,
        tile_frames=4,
        tile_overlap=0.0,
        image_fraction=0.25,
        max_frame_interval=4,
        lr=3e-3,
        warmup_steps=2,
        gan_start=4,
        checkpoint_every=100,
        scale_clips=4,
        eval_clips=4,
        dataset_length=64,
        progress=False,
    )
    base.update(changes)
    return VAETrainConfig(**base)  # type: ignore[arg-type]


def test_curriculum_phases_and_batches(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        steps=40,
        low_res_fraction=0.25,
        crop_fraction=0.25,
        tiling_fraction=0.25,
        image_fraction=0.3,
    )
    phases = [phase_name(config, s) for s in range(40)]
    assert phases == ["low_res"] * 10 + ["crop"] * 10 + ["full"] * 10 + ["tiling"] * 10
    batches = VAEBatches(config)
    seen_images = seen_tiled = 0
    intervals = set()
    for step in range(40):
        batch = batches.batch(step)
        size = {"low_res": 8, "crop": 8, "full": 16, "tiling": 16}[phases[step]]
        frames = 1 if batch.interval == 0 else 5
        assert tuple(batch.video.shape) == (2, 3, frames, size, size)
        assert batch.video.min() >= -1.0 and batch.video.max() <= 1.0
        assert batch.phase.tiled == (step >= 30 and frames > 1)  # tiling_probability 1, never images
        seen_images += frames == 1
        seen_tiled += batch.phase.tiled
        intervals.add(batch.interval)
    assert 4 <= seen_images <= 20 and seen_tiled >= 5
    assert intervals - {0} == {1, 2, 3, 4}
    assert torch.equal(batches.batch(7).video, VAEBatches(config).batch(7).video)  # pure in (seed, step)


def test_crops_are_windows_of_full_size_clips(tmp_path: Path) -> None:
    def first_clip(crop_size: int) -> torch.Tensor:
        phases = dict(low_res_fraction=0.0, crop_fraction=1.0, tiling_fraction=0.0)
        config = _config(tmp_path, steps=10, crop_size=crop_size, **phases)
        batch = VAEBatches(config).batch(2)
        assert batch.phase.name == "crop"
        return batch.video[0]  # (3, T, crop, crop)

    whole, crop = first_clip(16), first_clip(8)
    assert whole.shape[-2:] == (16, 16) and crop.shape[-2:] == (8, 8)
    windows = [whole[..., i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
    assert any(torch.equal(crop, window) for window in windows)  # full-size pixel scale, cropped


def test_crops_from_several_render_sizes(tmp_path: Path) -> None:
    phases = dict(low_res_fraction=0.0, crop_fraction=1.0, tiling_fraction=0.0)
    config = _config(tmp_path, steps=40, crop_render_sizes=(8, 16), **phases)
    batches = [VAEBatches(config).batch(step) for step in range(40)]
    assert {b.phase.rendered for b in batches} == {8, 16}
    assert {b.video.shape[-1] for b in batches} == {8}  # every batch is crop_size wide
    with pytest.raises(ValueError, match="crop_render_sizes"):
        _config(tmp_path, crop_render_sizes=(4,))


def test_frame_interval_sets_the_speed(tmp_path: Path) -> None:
    """Every k-th native frame: the largest interval spans the whole motion (the dataset's clip)."""
    batches = VAEBatches(_config(tmp_path, max_frame_interval=4))
    dt = batches.native_dt
    assert dt == pytest.approx(1 / 16)  # (5 - 1) frames x interval 4 = the whole clip
    np.testing.assert_allclose(frame_times(5, 4, dt, 0.3), [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(frame_times(5, 1, dt, 0.0), [0.0, 1 / 16, 2 / 16, 3 / 16, 4 / 16])
    np.testing.assert_allclose(frame_times(5, 2, dt, 1.0), [0.5, 0.625, 0.75, 0.875, 1.0])
    spec = batches.dataset.spec(3)
    np.testing.assert_array_equal(
        render_times(spec, frame_times(5, 4, dt, 0.0), 16), render_clip(spec, 5, 16)
    )


def test_perceptual_loss_and_discriminator_shapes() -> None:
    features = FixedFeatures()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    assert float(perceptual_loss(features, video, video)) == 0.0
    noisy = video + 0.1 * torch.randn_like(video)
    assert float(perceptual_loss(features, noisy, video)) > 0.01
    assert not any(p.requires_grad for p in features.parameters())
    disc = PatchDiscriminator3D()
    assert disc(video).shape[:2] == (2, 1)
    assert disc(video[:, :, :1]).shape[:2] == (2, 1)  # images too


def test_foreground_weight_marks_the_object() -> None:
    video = torch.full((1, 3, 2, 16, 16), -1.0)  # black
    video[:, 0, :, 4:8, 4:8] = 1.0  # a red square
    weight = foreground_weight(video, 10.0)
    assert weight.shape == (1, 1, 2, 16, 16)
    assert float(weight[0, 0, :, 4:8, 4:8].min()) == 11.0
    assert float(weight.sum()) == 2 * (16 * 16 + 10 * 16)
    assert float(foreground_weight(video, 0.0)) == 1.0


def test_foreground_weight_decays_over_the_run(tmp_path: Path) -> None:
    trainer = VAETrainer(_config(tmp_path, steps=10, foreground_weight=10.0, foreground_weight_end=1.0))
    assert [trainer.foreground_weight_at(s) for s in (0, 5, 10)] == [10.0, 5.5, 1.0]


def test_fresh_vae_init(tmp_path: Path) -> None:
    """The posterior starts nearly deterministic and every resnet block as the identity."""
    trainer = VAETrainer(_config(tmp_path, init_logvar=-6.0))
    video = trainer.batches.batch(0).video
    with torch.no_grad():
        posterior = trainer.vae.encode(video, tiled=False)
    torch.testing.assert_close(posterior.logvar, torch.full_like(posterior.logvar, -6.0))
    blocks = [m for m in trainer.vae.modules() if isinstance(m, ResnetBlockCausal3D)]
    assert blocks and all(int(torch.count_nonzero(b.conv2.conv.weight)) == 0 for b in blocks)
    plain = VAETrainer(_config(tmp_path, zero_init_residual=False))
    assert all(
        int(torch.count_nonzero(b.conv2.conv.weight)) > 0
        for b in plain.vae.modules()
        if isinstance(b, ResnetBlockCausal3D)
    )


def test_loss_goes_down_on_a_fixed_batch(tmp_path: Path) -> None:
    trainer = VAETrainer(
        _config(tmp_path, steps=30, low_res_fraction=0.0, tiling_fraction=0.0, gan_start=1000)
    )
    batch = trainer.batches.batch(1)
    l1 = [trainer.train_step(step, batch)["l1"] for step in range(30)]
    assert sum(l1[-5:]) / 5 < 0.6 * sum(l1[:3]) / 3


def test_gan_switches_on_after_warmup(tmp_path: Path) -> None:
    trainer = VAETrainer(_config(tmp_path, steps=6, gan_start=3))
    disc_before = [p.detach().clone() for p in trainer.disc.parameters()]
    history = []
    for step in range(6):
        history.append(trainer.train_step(step))
        if step == 2:  # before gan_start the discriminator is untouched
            assert all(torch.equal(a, b) for a, b in zip(disc_before, trainer.disc.parameters(), strict=True))
    assert [m["gan_weight"] > 0 for m in history] == [False] * 3 + [True] * 3
    assert all(m["disc"] == 0.0 for m in history[:3]) and all(m["disc"] > 0.0 for m in history[3:])
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, trainer.disc.parameters(), strict=True))


def test_saved_vae_round_trips_with_scaling_factor_and_eval(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", steps=4)
    trainer = VAETrainer(config)
    path = trainer.train()
    assert path == tmp_path / "run" / "vae"
    loaded = load_vae(path)
    reference = trainer.final_vae()
    video = trainer.batches.video(0, 5, 16).unsqueeze(0)
    with torch.no_grad():
        expected = reference.decode(reference.encode(video).mode())
        got = loaded.decode(loaded.encode(video).mode())
        torch.testing.assert_close(got, expected)
        latents = loaded.encode(torch.stack([trainer.batches.video(i, 5, 16) for i in range(4)])).mode()
    factor = loaded.config.scaling_factor
    assert factor == pytest.approx(reference.config.scaling_factor)
    assert float((latents * factor).std()) == pytest.approx(1.0, rel=1e-3)  # the same 4 clips set it
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["clips"] == 4 and report["scaling_factor"] == pytest.approx(factor)
    for mode in ("untiled", "tiled"):
        assert 0.0 < report[mode]["psnr"] < 60.0 and -1.0 <= report[mode]["ssim"] <= 1.0
    for name in ("loss.png", "losses.csv", "reconstructions.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert len((tmp_path / "run" / "losses.csv").read_text().splitlines()) == 1 + 4


class _StopError(Exception):
    pass


def test_decoder_fine_tune_keeps_the_encoder_and_its_scaling_factor(tmp_path: Path) -> None:
    base = load_vae(train_vae(_config(tmp_path / "base")))
    tuned = load_vae(
        train_vae(
            _config(tmp_path / "tuned", size=32, init_from=tmp_path / "base" / "vae", train_encoder=False)
        )
    )
    before, after = base.state_dict(), tuned.state_dict()
    encoder = [n for n in before if n.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(before[n], after[n]) for n in encoder)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("decoder."))
    # the same latents, though its clips (32 px) would measure another factor
    assert tuned.config.scaling_factor == base.config.scaling_factor


def test_resume_replays_an_interrupted_run_exactly(tmp_path: Path) -> None:
    steps = 6  # gan_start 4 and the tiling phase both fall after the interruption
    reference = VAETrainer(_config(tmp_path / "a", steps=steps, checkpoint_every=3))
    reference.train()

    def stop(step: int, metrics: dict[str, float]) -> None:
        if step == 4:  # killed after step 4; the newest checkpoint is step 3
            raise _StopError

    with pytest.raises(_StopError):
        train_vae(_config(tmp_path / "b", steps=steps, checkpoint_every=3), on_step=stop)
    resumed = VAETrainer(_config(tmp_path / "b", steps=steps, checkpoint_every=3, resume=True))
    assert resumed.step == 3
    resumed.train()
    for name, tensor in reference.vae.state_dict().items():
        assert torch.equal(tensor, resumed.vae.state_dict()[name]), name
    for name, tensor in reference.disc.state_dict().items():
        assert torch.equal(tensor, resumed.disc.state_dict()[name]), name
    assert [m["loss"] for m in reference.history] == [m["loss"] for m in resumed.history]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("num_frames", 16),
        ("size", 60),
        ("low_res_size", 128),
        ("kl_weight", -1.0),
        ("tiling_probability", 1.5),
        ("lr_schedule", "linear"),
        ("tile_size", 12),
    ],
)
def test_config_validation_names_the_field(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **{field: value})


def test_config_round_trips_through_dict(tmp_path: Path) -> None:
    config = _config(tmp_path, seed=3, crop_render_sizes=(8, 16))
    assert VAETrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        VAETrainConfig.from_dict({**config.to_dict(), "bogus": 1})
