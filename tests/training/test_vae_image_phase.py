"""The VAE's image phase (hyv/training/vae): large batches of image crops first, then the temporal
kernels folded onto the current frame (a keyframe codec to start the video phases from), with
the learning-rate schedule restarting at the first video step and exact resume across it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyv.models import CausalVAE3D
from hyv.models.vae_blocks import CausalConv3d
from hyv.models.vae_config import vae_preset
from hyv.training.vae import VAETrainConfig, VAETrainer, train_vae
from hyv.training.vae.data import VAEBatches, phase_name
from hyv.training.vae.trainer import inflate_temporal_kernels
from tests.training.test_vae_training import _config


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _image_config(out_dir: Path, **changes: object) -> VAETrainConfig:
    base: dict[str, object] = dict(
        steps=10,
        image_phase_fraction=0.4,
        low_res_fraction=0.0,
        crop_fraction=0.3,
        tiling_fraction=0.1,
        image_batch_size=5,
        image_fraction=0.0,
        lr=1e-3,
        video_lr=2e-4,
        warmup_steps=2,
        gan_start=100,
    )
    base.update(changes)
    return _config(out_dir, **base)


def _fresh_vae() -> CausalVAE3D:
    torch.manual_seed(0)
    vae = CausalVAE3D(vae_preset("tiny")).eval()
    with torch.no_grad():  # random temporal taps (a fresh conv's are, a trained image VAE's too)
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return vae


def test_image_phase_comes_first_with_big_batches_of_crops(tmp_path: Path) -> None:
    config = _image_config(tmp_path)
    phases = [phase_name(config, step) for step in range(10)]
    assert phases == ["images"] * 4 + ["crop"] * 3 + ["full"] * 2 + ["tiling"]
    batches = VAEBatches(config)
    for step in range(4):
        batch = batches.batch(step)
        assert tuple(batch.video.shape) == (5, 3, 1, 8, 8)  # image_batch_size crops of crop_size
        assert batch.interval == 0 and not batch.phase.tiled
    assert batches.batch(4).video.shape[2] == 5  # videos from the first crop step (image_fraction 0)


def test_inflation_keeps_images_and_makes_every_conv_frame_local() -> None:
    vae = _fresh_vae()
    image = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        image_before = vae.decode(vae.encode(image).mode())
        inflate_temporal_kernels(vae)
        torch.testing.assert_close(vae.decode(vae.encode(image).mode()), image_before, atol=1e-4, rtol=1e-3)
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d) and m.conv.weight.shape[2] > 1]
    strides = {m.conv.stride[0] for m in convs}
    assert strides == {1, 2}  # the resnet convs and the temporal downsamplers are both covered
    for conv in convs:
        x = torch.randn(1, conv.conv.in_channels, 9, 4, 4)
        y = x.clone()
        y[:, :, 3] += 1.0  # one odd (non-key) input frame changes
        with torch.no_grad():
            diff = (conv(x) - conv(y)).abs().amax(dim=(0, 1, 3, 4))  # per output frame
        stride = conv.conv.stride[0]
        # (B, C, T, H, W): output frame t sees only input frame stride * t.
        expected = [stride * t == 3 for t in range(diff.shape[0])]
        assert [bool(d > 1e-6) for d in diff] == expected, (stride, diff)


def test_lr_restarts_at_the_first_video_step(tmp_path: Path) -> None:
    trainer = VAETrainer(_image_config(tmp_path, lr_schedule="constant", min_lr_ratio=0.5))
    rates = [trainer.lr(step) for step in range(10)]
    assert rates[:4] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # warmup 2 steps, then lr
    assert rates[4:] == pytest.approx([1e-4, 2e-4, 2e-4, 2e-4, 2e-4, 2e-4])  # warmup again to video_lr
    assert [trainer.is_video_start(step) for step in range(10)] == [s == 4 for s in range(10)]


def test_training_inflates_once_and_resumes_exactly_across_the_boundary(tmp_path: Path) -> None:
    reference = VAETrainer(_image_config(tmp_path / "a", checkpoint_every=4))
    reference.train()
    for module in reference.vae.modules():  # the taps before the current frame started at zero
        if module.__class__.__name__ == "CausalConv3d" and module.conv.weight.shape[2] > 1:
            assert module.conv.weight[:, :, :-1].abs().max() < 0.05

    class StopError(Exception):
        pass

    def stop(step: int, metrics: dict[str, float]) -> None:
        if step == 6:  # killed after step 6; the newest checkpoint is step 4, the image phase's end
            raise StopError

    with pytest.raises(StopError):
        train_vae(_image_config(tmp_path / "b", checkpoint_every=4), on_step=stop)
    resumed = VAETrainer(_image_config(tmp_path / "b", checkpoint_every=4, resume=True))
    assert resumed.step == 4
    resumed.train()
    for name, tensor in reference.vae.state_dict().items():
        assert torch.equal(tensor, resumed.vae.state_dict()[name]), name
    assert [m["loss"] for m in reference.history] == [m["loss"] for m in resumed.history]
