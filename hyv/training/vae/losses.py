"""The VAE's training losses beyond L1 + KL: a fixed-feature perceptual loss and a 3D patch GAN.

`FixedFeatures` stands in for LPIPS' VGG (nothing can be downloaded here): per frame, a Sobel
gradient stage (hand-designed edge filters on luma and color) followed by three conv + ReLU
stages with fixed random weights (seeded, orthogonal init, never trained), at 1, 1/2 and 1/4
resolution. The loss is the mean L1 distance of unit-normalized features at every stage, so it
weighs edges and textures at several scales, as LPIPS does.

`PatchDiscriminator3D` is a small 3D conv net (PatchGAN over space and time) scored with the hinge
loss; the generator's GAN loss is weighted adaptively as in taming-transformers / LDM:
weight = |grad of the reconstruction loss| / |grad of the GAN loss| at the decoder's last layer.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * T, C, H, W)."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


class FixedFeatures(nn.Module):
    """A frozen multi-scale feature extractor: Sobel edges + 3 random conv stages (see module doc)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), seed: int = 1234) -> None:
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0
        edges = torch.stack([sobel_x, sobel_x.t()])  # (2, 3, 3)
        # Each of the 3 input channels gets both edge filters (grouped conv): 6 edge maps.
        self.register_buffer("sobel", edges.repeat(3, 1, 1).unsqueeze(1), persistent=False)  # (6, 1, 3, 3)
        generator = torch.Generator().manual_seed(seed)
        weights = []
        previous = 3
        for width in widths:
            fan_in = previous * 9
            if width > fan_in:
                raise ValueError(f"feature width {width} exceeds the fan-in {fan_in} of its 3x3 conv")
            q, _ = torch.linalg.qr(torch.randn(fan_in, fan_in, generator=generator))  # orthonormal rows
            weights.append((q[:width] * 2.0).reshape(width, previous, 3, 3))  # (out, in, 3, 3)
            previous = width
        for index, w in enumerate(weights):
            self.register_buffer(f"weight{index}", w, persistent=False)
        self.num_stages = len(widths)

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage for a video (B, 3, T, H, W) in [-1, 1]."""
        x = _frames(video)
        sobel = cast(torch.Tensor, self.sobel)
        feats = [F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), sobel, groups=3)]
        for index in range(self.num_stages):
            if index > 0 and min(x.shape[-2:]) >= 4:
                x = F.avg_pool2d(x, 2)
            weight = cast(torch.Tensor, getattr(self, f"weight{index}"))
            x = F.relu(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight))
            feats.append(x)
        return feats


def perceptual_loss(features: FixedFeatures, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over stages of the L1 distance between channel-normalized features."""
    total = recon.new_zeros(())
    with torch.no_grad():
        target_feats = features(target)
    recon_feats = features(recon)
    for a, b in zip(recon_feats, target_feats, strict=True):
        scale = b.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt() + 1e-3  # per-channel RMS of the target
        total = total + (a / scale - b / scale).abs().mean()
    return total / len(recon_feats)


class PatchDiscriminator3D(nn.Module):
    """PatchGAN over (T, H, W): logits (B, 1, t, h, w) for patches of a video (B, 3, T, H, W).

    Images (T = 1) go through the same net: the temporal kernels see replicated padding.
    """

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, layers):
            out = min(channels * 2**index, 128)
            stride = (2, 2, 2) if index == 1 else (1, 2, 2)
            blocks += [
                nn.Conv3d(width, out, (3, 4, 4), stride, (1, 1, 1), bias=False),
                nn.GroupNorm(8, out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        blocks.append(nn.Conv3d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.shape[2] < 3:  # give the temporal kernels something to see
            video = video.repeat(1, 1, 3 // video.shape[2] + 1, 1, 1)
        return self.net(video)  # type: ignore[no-any-return]


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_gan_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """|d rec / d last| / |d gan / d last| (LDM's balancing of the two losses), detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
