"""Building blocks of the causal 3D VAE: causal conv, resnet, samplers, mid block, encoder, decoder.

Module and attribute names mirror diffusers' `autoencoder_kl_hunyuan_video.py` (and therefore the
official HunyuanVideo checkpoint) so state dicts load with strict=True and no renaming.

Layout: every video tensor is (B, C, T, H, W).

Causality: a `CausalConv3d` pads time on the past side only (replicating frame 0), so output frame
t depends on input frames <= t, and frame 0 sees only itself. The mid-block attention is causal
per frame: a token attends to every token of its own frame and of earlier frames.
GroupNorm statistics span all frames (as in the official model), so the VAE as a whole is causal
in its convolutions and attention, not strictly in its normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyv.models import ops

GROUP_NORM_EPS = 1e-6


def group_norm(groups: int, channels: int) -> nn.Module:
    """GroupNorm over (channels / groups, T, H, W), or the identity when `groups` is 0.

    groups=0 is for decoders of flat-colored data (VAEConfig.decoder_norm_num_groups): a group
    normalized over a flat frame keeps only the direction of its within-group vector, so a
    GroupNorm decoder cannot paint a flat frame in the color its latent encodes."""
    if groups == 0:
        return nn.Identity()
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS, affine=True)


def block_scales(index: int, num_blocks: int, spatial_ratio: int, temporal_ratio: int) -> tuple[bool, bool]:
    """(spatial, temporal) resampling of block `index`, the rule of HunyuanVideo's encoder/decoder.

    The first log2(spatial_ratio) blocks resample space; for 4x time the two blocks before the
    last resample time (for the official 4 blocks: space in blocks 0,1,2; time in blocks 1,2).
    The same rule applies to the decoder's up blocks counted from the latent side.
    """
    num_spatial = spatial_ratio.bit_length() - 1
    num_temporal = temporal_ratio.bit_length() - 1
    is_final = index == num_blocks - 1
    spatial = index < num_spatial
    temporal = index >= num_blocks - 1 - num_temporal and not is_final
    return spatial, temporal


class CausalConv3d(nn.Module):
    """Conv3d with replicate padding: symmetric in H and W, only the past side (k_t - 1) in T."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        k = kernel_size
        # F.pad order: (W_left, W_right, H_top, H_bottom, T_past, T_future).
        self.time_causal_padding = (k // 2, k // 2, k // 2, k // 2, k - 1, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.time_causal_padding, mode="replicate")
        return self.conv(x)


class ResnetBlockCausal3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = group_norm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return h + residual


class DownsampleCausal3D(nn.Module):
    """Strided causal conv; stride (t, h, w) with each entry 1 or 2."""

    def __init__(self, channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampleCausal3D(nn.Module):
    """Nearest upsampling by (t, h, w); frame 0 is upsampled in space only (it stays one frame)."""

    def __init__(self, channels: int, scale: tuple[int, int, int]) -> None:
        super().__init__()
        self.scale = scale
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_frames = x.shape[2]
        first, rest = x.split((1, num_frames - 1), dim=2)
        first = F.interpolate(first.squeeze(2), scale_factor=self.scale[1:], mode="nearest").unsqueeze(2)
        if num_frames > 1:
            # interpolate needs a contiguous input (pytorch#81665).
            rest = F.interpolate(rest.contiguous(), scale_factor=self.scale, mode="nearest")
            x = torch.cat((first, rest), dim=2)  # (B, C, 1 + s_t (T - 1), s_h H, s_w W)
        else:
            x = first
        return self.conv(x)


class MidBlockAttention(nn.Module):
    """Single-head self-attention over all (T, H, W) tokens, causal across frames.

    Named like diffusers' `Attention(_from_deprecated_attn_block=True)`: group_norm, to_q, to_k,
    to_v, to_out.0. Runs one `ops.attention` call per query frame over the keys of frames <= t,
    which is exact (masked keys get zero weight) and never materialises an (L, L) mask.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = group_norm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        tokens = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)  # (B, L, C)
        q = self.to_q(tokens).unsqueeze(2)  # (B, L, 1, C): one head of dim C
        k = self.to_k(tokens).unsqueeze(2)
        v = self.to_v(tokens).unsqueeze(2)
        per_frame = H * W
        outs = []
        for t in range(T):
            end = (t + 1) * per_frame
            outs.append(ops.attention(q[:, t * per_frame : end], k[:, :end], v[:, :end]))  # (B, HW, 1, C)
        out = torch.cat(outs, dim=1).reshape(B, T * H * W, C)  # (B, L, C)
        out = self.to_out[1](self.to_out[0](out))
        out = out.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        return out + x


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool) -> None:
        super().__init__()
        self.add_attention = add_attention
        self.attentions = nn.ModuleList([MidBlockAttention(channels, groups)] if add_attention else [])
        self.resnets = nn.ModuleList([ResnetBlockCausal3D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.add_attention:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        stride: tuple[int, int, int] | None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nn.ModuleList([DownsampleCausal3D(out_channels, stride)]) if stride is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        scale: tuple[int, int, int] | None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlockCausal3D(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = (
            nn.ModuleList([UpsampleCausal3D(out_channels, scale)]) if scale is not None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def _run(module: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        out: torch.Tensor = checkpoint(module, x, use_reentrant=False)
        return out
    result: torch.Tensor = module(x)
    return result


class Encoder3D(nn.Module):
    """Video (B, in, T, H, W) -> moments (B, 2 * latent, 1 + (T-1)/4, H/8, W/8) before quant_conv."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        groups: int,
        spatial_ratio: int,
        temporal_ratio: int,
        add_attention: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], 3)
        self.down_blocks = nn.ModuleList()
        prev = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            spatial, temporal = block_scales(i, len(block_out_channels), spatial_ratio, temporal_ratio)
            stride = (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1)
            self.down_blocks.append(
                DownBlock3D(prev, channels, layers_per_block, groups, stride if spatial or temporal else None)
            )
            prev = channels
        top = block_out_channels[-1]
        self.mid_block = MidBlock3D(top, groups, add_attention)
        self.conv_norm_out = group_norm(groups, top)
        self.conv_act = nn.SiLU()
        self.conv_out = CausalConv3d(top, 2 * latent_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = _run(block, x, self.gradient_checkpointing)
        x = _run(self.mid_block, x, self.gradient_checkpointing)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder3D(nn.Module):
    """Latents (B, latent, t, h, w) after post_quant_conv -> video (B, out, 1 + 4(t-1), 8h, 8w)."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        groups: int,
        spatial_ratio: int,
        temporal_ratio: int,
        add_attention: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        top = block_out_channels[-1]
        self.conv_in = CausalConv3d(latent_channels, top, 3)
        self.mid_block = MidBlock3D(top, groups, add_attention)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        prev = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            spatial, temporal = block_scales(i, len(block_out_channels), spatial_ratio, temporal_ratio)
            scale = (2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1)
            self.up_blocks.append(
                UpBlock3D(
                    prev, channels, layers_per_block + 1, groups, scale if spatial or temporal else None
                )
            )
            prev = channels
        self.conv_norm_out = group_norm(groups, block_out_channels[0])
        self.conv_act = nn.SiLU()
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = _run(self.mid_block, x, self.gradient_checkpointing)
        for block in self.up_blocks:
            x = _run(block, x, self.gradient_checkpointing)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
