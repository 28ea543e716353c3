"""HunyuanVideo's 3D causal VAE (`CausalVAE3D`), its posterior (`DiagonalGaussian`) and tiling.

Shapes: a video is (B, 3, T, H, W) in [-1, 1] with T = 4n + 1 (an image is a 1-frame video) and
H, W multiples of 8; its latents are (B, 16, n + 1, H/8, W/8). Latents are NOT scaled: the caller
maps them to the DiT's space with `to_dit_latents` (z * scaling_factor, as diffusers does, or the
per-channel (z - mean) / std when the config has latent statistics) and back with `from_dit_latents`.

Tiling follows diffusers' `AutoencoderKLHunyuanVideo` (which follows the official code):
- temporal tiles of `sample_frames + 1` frames every `stride_frames`, the first frame of every
  tile but the first dropped (a causal clip encodes its first frame alone), linearly blended over
  `sample_frames - stride_frames` frames (decode) / the latent equivalent (encode);
- inside each temporal tile, spatial tiles of `sample_size` px every `stride_size`, blended
  linearly with the tile above and the tile on the left.
A dimension no longer than one tile is never split. Differences from diffusers: the time tiles are
produced as a stream (`iter_decode`) and spatial rows are blended as they are decoded, so only the
previous time tile / tile row is held; the arithmetic is the same, so outputs match diffusers'
`enable_tiling` with the same tile parameters. Diffusers' default temporal tile is 16 frames; ours
is the official 64 frames (16 latent frames).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from hyv.models.vae_blocks import Decoder3D, Encoder3D
from hyv.models.vae_config import VAEConfig, VAETiling


def _channel_view(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    shape = (1, len(values)) + (1,) * (like.ndim - 2)  # broadcast over (B, C, t, h, w)
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(shape)


def to_dit_latents(z: torch.Tensor, config: VAEConfig) -> torch.Tensor:
    """VAE latents (B, C, t, h, w) -> the DiT's latent space (unit variance)."""
    if config.latents_mean is None or config.latents_std is None:
        return z * config.scaling_factor
    return (z - _channel_view(config.latents_mean, z)) / _channel_view(config.latents_std, z)


def from_dit_latents(x: torch.Tensor, config: VAEConfig) -> torch.Tensor:
    """The inverse of `to_dit_latents`."""
    if config.latents_mean is None or config.latents_std is None:
        return x / config.scaling_factor
    return x * _channel_view(config.latents_std, x) + _channel_view(config.latents_mean, x)


logger = logging.getLogger(__name__)

TileFn = Callable[[torch.Tensor], torch.Tensor]
TileProgressFn = Callable[[int, int], None]  # (tiles done, tiles)


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) over latents (B, C, t, h, w)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.moments = moments  # (B, 2C, t, h, w)
        mean, logvar = moments.chunk(2, dim=1)  # (B, C, t, h, w) each
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per batch item, summed over all latent elements: (B,).

        (diffusers sums over dims [1, 2, 3] only, which for video leaves a (B, W) tensor.)
        """
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(dim=1)


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the last `extent` slices of `a` into the first of `b` along `dim`, in place on b.

    Same weights as diffusers' blend_t/blend_v/blend_h: b[y] = a[-e + y] (1 - y/e) + b[y] y/e.
    """
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[dim] = extent
    w_b = torch.tensor([y / extent for y in range(extent)], dtype=b.dtype, device=b.device).reshape(shape)
    w_a = torch.tensor([1 - y / extent for y in range(extent)], dtype=b.dtype, device=b.device).reshape(shape)
    head = b.narrow(dim, 0, extent)
    tail = a.narrow(dim, a.shape[dim] - extent, extent)
    head.copy_(tail * w_a + head * w_b)
    return b


def _tile_2d(
    x: torch.Tensor, fn: TileFn, tile: int, stride: int, blend: int, keep: int, out_h: int, out_w: int
) -> torch.Tensor:
    """Run `fn` on overlapping (tile x tile) windows of x's last two dims and blend the outputs.

    tile/stride are in input units; blend/keep (= the output stride) in output units. Only the
    previous row of outputs is kept while the next one is computed.
    """
    height, width = x.shape[-2:]
    prev_row: list[torch.Tensor] | None = None
    rows: list[torch.Tensor] = []
    for i in range(0, height, stride):
        row = [fn(x[..., i : i + tile, j : j + tile]) for j in range(0, width, stride)]
        kept = []
        for j, out in enumerate(row):
            if prev_row is not None:
                _blend(prev_row[j], out, blend, dim=-2)
            if j > 0:
                _blend(row[j - 1], out, blend, dim=-1)
            kept.append(out[..., :keep, :keep])
        rows.append(torch.cat(kept, dim=-1))
        prev_row = row
    return torch.cat(rows, dim=-2)[..., :out_h, :out_w]


def _iter_tiles_t(
    x: torch.Tensor, fn: TileFn, tile: int, stride: int, blend: int, keep: int, total: int
) -> Iterator[torch.Tensor]:
    """Temporal tiling over dim 2: windows of `tile + 1` input frames every `stride`.

    Yields, in order, the output frames that are final after each window (blended with the
    previous window); `blend`, `keep` (= output stride) and `total` are in output frames.
    """
    emitted = 0
    prev: torch.Tensor | None = None
    for index, start in enumerate(range(0, x.shape[2], stride)):
        window = x[:, :, start : start + tile + 1]
        if index > 0 and window.shape[2] == 1:
            break  # a single frame is dropped whole: nothing left to contribute
        out = fn(window)
        if index > 0:
            out = out[:, :, 1:]  # first frame of a causal window was encoded alone
            _blend(prev, out, blend, dim=2)  # type: ignore[arg-type]
        count = min(keep + (1 if index == 0 else 0), out.shape[2], total - emitted)
        if count > 0:
            yield out[:, :, :count].clone()
            emitted += count
        prev = out


def _counted(fn: TileFn, on_tile: TileProgressFn, total: int) -> TileFn:
    """`fn`, calling on_tile(done, total) after each call."""
    done = 0

    def counted(tile: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = fn(tile)
        done += 1
        on_tile(done, total)
        return out

    return counted


def _time_window_count(frames: int, stride: int) -> int:
    """How many windows `_iter_tiles_t` runs `fn` on over `frames` input frames: one per `stride`,
    but a trailing single-frame window (past the first) is dropped."""
    return sum(1 for start in range(0, frames, stride) if start == 0 or start < frames - 1)


class CausalVAE3D(nn.Module):
    """HunyuanVideo's AutoencoderKLCausal3D; parameter names match diffusers' AutoencoderKLHunyuanVideo."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        blocks = dict(
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            groups=config.norm_num_groups,
            spatial_ratio=config.spatial_compression_ratio,
            temporal_ratio=config.temporal_compression_ratio,
            add_attention=config.mid_block_add_attention,
        )
        self.encoder = Encoder3D(config.in_channels, config.latent_channels, **blocks)  # type: ignore[arg-type]
        blocks["groups"] = config.decoder_groups
        self.decoder = Decoder3D(config.latent_channels, config.out_channels, **blocks)  # type: ignore[arg-type]
        self.quant_conv = nn.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(config.latent_channels, config.latent_channels, kernel_size=1)

    # ----------------------------------------------------------------------------------------------
    # Shapes and checks

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latents of a (frames, height, width) video."""
        self._check_geometry(frames, height, width)
        c = self.config
        return (
            c.latent_channels,
            (frames - 1) // c.temporal_compression_ratio + 1,
            height // c.spatial_compression_ratio,
            width // c.spatial_compression_ratio,
        )

    def _check_geometry(self, frames: int, height: int, width: int) -> None:
        rt, rs = self.config.temporal_compression_ratio, self.config.spatial_compression_ratio
        if frames < 1 or (frames - 1) % rt:
            raise ValueError(f"number of frames must be {rt}n+1 (1, 5, 9, ...), got {frames}")
        for name, value in (("height", height), ("width", width)):
            if value < rs or value % rs:
                raise ValueError(f"video {name} must be a positive multiple of {rs}, got {value}")

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(
                f"video must be (B, C, T, H, W), got shape {tuple(video.shape)} "
                "(an image is a 1-frame video: use x.unsqueeze(2))"
            )
        if video.shape[1] != self.config.in_channels:
            raise ValueError(f"video must have {self.config.in_channels} channels, got {video.shape[1]}")
        self._check_geometry(*video.shape[2:])

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5:
            raise ValueError(f"latents must be (B, C, t, h, w), got shape {tuple(z.shape)}")
        if z.shape[1] != self.config.latent_channels:
            raise ValueError(f"latents must have {self.config.latent_channels} channels, got {z.shape[1]}")
        if min(z.shape[2:]) < 1:
            raise ValueError(f"latents must have at least one frame and pixel, got shape {tuple(z.shape)}")

    # ----------------------------------------------------------------------------------------------
    # Untiled passes

    def _encode_full(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2C, t, h, w)

    def _decode_full(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))  # (B, 3, T, H, W)

    # ----------------------------------------------------------------------------------------------
    # Encode

    def encode(
        self, video: torch.Tensor, tiled: bool | None = None, tiling: VAETiling | None = None
    ) -> DiagonalGaussian:
        """Posterior over latents of `video` (B, 3, T, H, W) in [-1, 1].

        tiled=False: one pass. tiled=True or None (auto): split every dimension that is longer
        than one tile (so a video that fits a tile takes one pass either way).
        """
        self._check_video(video)
        x = video.to(self.dtype)
        if tiled is False:
            return DiagonalGaussian(self._encode_full(x))
        tiling = tiling or self.config.tiling()
        if x.shape[2] > tiling.sample_frames:
            latent_frames = (x.shape[2] - 1) // tiling.temporal_ratio + 1
            chunks = _iter_tiles_t(
                x,
                lambda tile: self._encode_spatial(tile, tiling),
                tile=tiling.sample_frames,
                stride=tiling.stride_frames,
                blend=tiling.latent_frames - tiling.latent_stride_frames,
                keep=tiling.latent_stride_frames,
                total=latent_frames,
            )
            return DiagonalGaussian(torch.cat(list(chunks), dim=2))  # (B, 2C, t, h, w)
        return DiagonalGaussian(self._encode_spatial(x, tiling))

    def _encode_spatial(self, x: torch.Tensor, tiling: VAETiling) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height <= tiling.sample_size and width <= tiling.sample_size:
            return self._encode_full(x)
        ratio = tiling.spatial_ratio
        return _tile_2d(
            x,
            self._encode_full,
            tile=tiling.sample_size,
            stride=tiling.stride_size,
            blend=tiling.latent_size - tiling.latent_stride_size,
            keep=tiling.latent_stride_size,
            out_h=height // ratio,
            out_w=width // ratio,
        )

    # ----------------------------------------------------------------------------------------------
    # Decode

    def decode(
        self, z: torch.Tensor, tiled: bool | None = None, tiling: VAETiling | None = None
    ) -> torch.Tensor:
        """Video (B, 3, 4(t-1)+1, 8h, 8w) from unscaled latents z (B, 16, t, h, w).

        tiled=False: one pass over the whole latent video. tiled=True or None (auto): tiles of
        `tiling` (default: the config's) wherever z is larger than a tile, so decoder activations
        are bounded by the tile size whatever the video's length.
        """
        if tiled is False:
            self._check_latents(z)
            return self._decode_full(z.to(self.dtype))
        return torch.cat(list(self.iter_decode(z, tiling)), dim=2)

    def iter_decode(
        self, z: torch.Tensor, tiling: VAETiling | None = None, on_tile: TileProgressFn | None = None
    ) -> Iterator[torch.Tensor]:
        """Decode time tile by time tile, yielding final frames (B, 3, n_i, H, W) in order.

        Each chunk is already blended with its neighbours; `torch.cat(chunks, dim=2)` equals
        `decode(z, tiled=True)`. Only the current and previous time tile are held in memory.
        `on_tile(done, total)` is called after each decoder pass (a spatial tile of a time tile;
        total = `decode_tile_count(z.shape, tiling)`): what progress reports and cancel checks hang on.
        """
        self._check_latents(z)
        z = z.to(self.dtype)
        tiling = tiling or self.config.tiling()
        decode_tile: TileFn = self._decode_full
        if on_tile is not None:
            decode_tile = _counted(self._decode_full, on_tile, self.decode_tile_count(z.shape, tiling))
        if z.shape[2] <= tiling.latent_frames:
            yield self._decode_spatial(z, tiling, decode_tile)
            return
        yield from _iter_tiles_t(
            z,
            lambda tile: self._decode_spatial(tile, tiling, decode_tile),
            tile=tiling.latent_frames,
            stride=tiling.latent_stride_frames,
            blend=tiling.sample_frames - tiling.stride_frames,
            keep=tiling.stride_frames,
            total=(z.shape[2] - 1) * tiling.temporal_ratio + 1,
        )

    def decode_tile_count(self, latent_shape: Sequence[int], tiling: VAETiling | None = None) -> int:
        """How many decoder passes `iter_decode` makes for latents of `latent_shape` (B, C, t, h, w):
        time tiles x spatial tiles per time tile."""
        tiling = tiling or self.config.tiling()
        frames, height, width = latent_shape[2:]
        windows = 1
        if frames > tiling.latent_frames:  # else one pass over all frames (iter_decode)
            windows = _time_window_count(frames, tiling.latent_stride_frames)
        if height <= tiling.latent_size and width <= tiling.latent_size:
            return windows
        stride = tiling.latent_stride_size
        return windows * len(range(0, height, stride)) * len(range(0, width, stride))

    def _decode_spatial(
        self, z: torch.Tensor, tiling: VAETiling, decode_tile: TileFn | None = None
    ) -> torch.Tensor:
        decode_tile = decode_tile or self._decode_full
        height, width = z.shape[-2:]
        if height <= tiling.latent_size and width <= tiling.latent_size:
            return decode_tile(z)
        ratio = tiling.spatial_ratio
        return _tile_2d(
            z,
            decode_tile,
            tile=tiling.latent_size,
            stride=tiling.latent_stride_size,
            blend=tiling.sample_size - tiling.stride_size,
            keep=tiling.stride_size,
            out_h=height * ratio,
            out_w=width * ratio,
        )

    # ----------------------------------------------------------------------------------------------
    # Training forward

    def forward(
        self,
        video: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Untiled reconstruction for training: (reconstruction, posterior)."""
        posterior = self.encode(video, tiled=False)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, tiled=False), posterior
