"""The VAE decode split across ranks by time tiles.

`CausalVAE3D.decode(z, tiled=True)` decodes overlapping time windows one after the other and
cross-fades each with the previous one (`hyv.models.vae._iter_tiles_t`). Here the windows (the
expensive part) are dealt round-robin over the ranks: in round k, rank r decodes window
k * N + r, and each decoded window is broadcast from its owner. Every rank then runs the very same
`_iter_tiles_t` blending over the decoded windows, so the result is bit-identical to the
single-process tiled decode (same thread count), on every rank. Chunks stream out in order; at most
about one round of windows is held.

Every rank must consume the whole stream (the broadcasts are collective).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from hyv.models.vae import CausalVAE3D, DiagonalGaussian, TileProgressFn, _iter_tiles_t
from hyv.models.vae_config import VAEConfig, VAETiling

logger = logging.getLogger(__name__)


def time_windows(num_frames: int, tiling: VAETiling) -> list[tuple[int, int]]:
    """(start, length) in latent frames of the time windows `_iter_tiles_t` decodes, in order."""
    tile, stride = tiling.latent_frames, tiling.latent_stride_frames
    windows = []
    for index, start in enumerate(range(0, num_frames, stride)):
        length = min(tile + 1, num_frames - start)
        if index > 0 and length == 1:
            break  # _iter_tiles_t drops a trailing single-frame window whole
        windows.append((start, length))
    return windows


@torch.no_grad()
def sp_iter_decode(
    vae: CausalVAE3D,
    latents: torch.Tensor,
    tiling: VAETiling | None = None,
    group: dist.ProcessGroup | None = None,
    on_tile: TileProgressFn | None = None,
) -> Iterator[torch.Tensor]:
    """`vae.iter_decode(latents, tiling, on_tile)` with the time windows split over `group` (default:
    the world). latents (B, C, t, h, w), identical on every rank -> the same chunks (B, 3, n_i, H, W)
    on every rank. A video of a single time window is decoded by every rank on its own. `on_tile`
    hears of a time tile's spatial tiles at once, when this rank has its decoded window."""
    tiling = tiling or vae.config.tiling()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if world == 1 or latents.shape[2] <= tiling.latent_frames:
        yield from vae.iter_decode(latents, tiling, on_tile)
        return
    vae._check_latents(latents)
    z = latents.to(vae.dtype)
    B, _, T, h, w = z.shape
    windows = time_windows(T, tiling)
    rt, rs = tiling.temporal_ratio, tiling.spatial_ratio
    tiles: dict[int, tuple[torch.Tensor, dist.Work | None]] = {}
    issued = 0
    total_tiles = vae.decode_tile_count(z.shape, tiling)
    tiles_per_window = total_tiles // len(windows)

    def issue(index: int) -> None:
        """Decode window `index` if it is ours, and start its broadcast (every rank, in order)."""
        start, length = windows[index]
        owner = index % world
        shape = (B, vae.config.out_channels, (length - 1) * rt + 1, h * rs, w * rs)
        if owner == rank:
            tile = vae._decode_spatial(z[:, :, start : start + length], tiling)
            if tuple(tile.shape) != shape:
                raise RuntimeError(f"decoded time tile has shape {tuple(tile.shape)}, expected {shape}")
            tile = tile.contiguous()
        else:
            tile = z.new_empty(shape)
        src = owner if group is None else dist.get_global_rank(group, owner)
        tiles[index] = (tile, dist.broadcast(tile, src=src, group=group, async_op=True))

    consumed = 0

    def lookup(window: torch.Tensor) -> torch.Tensor:
        """The decoded window that `_iter_tiles_t` asks for (it asks for them in order)."""
        nonlocal issued, consumed
        wanted, consumed = consumed, consumed + 1
        # Keep the whole round in flight: every rank decodes its window of the round concurrently.
        while issued < min(len(windows), (wanted // world + 1) * world):
            issue(issued)
            issued += 1
        tile, work = tiles.pop(wanted)
        if work is not None:
            work.wait()
        if on_tile is not None:
            on_tile((wanted + 1) * tiles_per_window, total_tiles)
        if tile.shape[2] != (window.shape[2] - 1) * rt + 1:
            raise RuntimeError(
                f"time window {wanted}: {window.shape[2]} latent frames, tile {tuple(tile.shape)}"
            )
        return tile

    logger.debug(
        "rank %d decodes %d of %d time tiles", rank, len(range(rank, len(windows), world)), len(windows)
    )
    yield from _iter_tiles_t(
        z,
        lookup,
        tile=tiling.latent_frames,
        stride=tiling.latent_stride_frames,
        blend=tiling.sample_frames - tiling.stride_frames,
        keep=tiling.stride_frames,
        total=(T - 1) * tiling.temporal_ratio + 1,
    )


def sp_decode(
    vae: CausalVAE3D,
    latents: torch.Tensor,
    tiling: VAETiling | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """`vae.decode(latents, tiled=True, tiling=tiling)` with the time tiles split over `group`:
    video (B, 3, 4(t-1)+1, 8h, 8w) on every rank."""
    return torch.cat(list(sp_iter_decode(vae, latents, tiling, group)), dim=2)


class SequenceParallelVAE(nn.Module):
    """A `CausalVAE3D` whose tiled decode is split over the ranks (encode is unchanged)."""

    def __init__(self, vae: CausalVAE3D, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.group = group

    @property
    def config(self) -> VAEConfig:
        return self.vae.config

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def scaling_factor(self) -> float:
        return self.vae.scaling_factor

    def encode(
        self, video: torch.Tensor, tiled: bool | None = None, tiling: VAETiling | None = None
    ) -> DiagonalGaussian:
        return self.vae.encode(video, tiled, tiling)

    def decode(
        self, z: torch.Tensor, tiled: bool | None = None, tiling: VAETiling | None = None
    ) -> torch.Tensor:
        if tiled is False:
            return self.vae.decode(z, tiled=False)
        return sp_decode(self.vae, z, tiling, self.group)

    def iter_decode(
        self, z: torch.Tensor, tiling: VAETiling | None = None, on_tile: TileProgressFn | None = None
    ) -> Iterator[torch.Tensor]:
        return sp_iter_decode(self.vae, z, tiling, self.group, on_tile)

    def decode_tile_count(self, latent_shape: Sequence[int], tiling: VAETiling | None = None) -> int:
        return self.vae.decode_tile_count(latent_shape, tiling)
