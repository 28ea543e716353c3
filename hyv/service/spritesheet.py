"""A finished video's spritesheet (`GET /v1/videos/{id}/content?variant=spritesheet`): one JPEG of
evenly spaced frames laid out in a square grid, row by row, each tile at the video's own size.

The grid is the largest square that the frame count fills, up to 4x4: 16 tiles for 16 frames or
more, 9 for 9-15, 4 for 4-8, and one row of every frame for 1-3 frames (every length our models
make, 4n+1, gives a full square with no empty tile). Tile i shows frame round(i * (T - 1) / (n - 1))
of the T frames, so the first tile is the first frame and the last tile the last.

The MP4 is decoded with PyAV and nothing else (the API process, which builds spritesheets on first
request, never imports torch).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

logger = logging.getLogger(__name__)

MAX_GRID_SIDE = 4
JPEG_QUALITY = 92
MEDIA_TYPE = "image/jpeg"


@dataclass(frozen=True)
class SpritesheetLayout:
    """`columns` x `rows` tiles showing `frame_indices` (row-major) of a `frame_count`-frame video."""

    frame_count: int
    columns: int
    rows: int
    frame_indices: tuple[int, ...]

    @classmethod
    def for_frames(cls, frame_count: int) -> SpritesheetLayout:
        if frame_count < 1:
            raise ValueError(f"a spritesheet needs at least one frame, got {frame_count}")
        if frame_count < MAX_GRID_SIDE:
            columns, rows = frame_count, 1
        else:
            columns = rows = min(MAX_GRID_SIDE, math.isqrt(frame_count))
        tiles = columns * rows
        if tiles == 1:
            indices: tuple[int, ...] = (0,)
        else:
            indices = tuple(round(i * (frame_count - 1) / (tiles - 1)) for i in range(tiles))
        return cls(frame_count, columns, rows, indices)

    def tile_box(self, tile: int, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile `tile` in a sheet of `width` x `height` frames."""
        left, top = (tile % self.columns) * width, (tile // self.columns) * height
        return left, top, left + width, top + height


def count_frames(source: Path | bytes) -> int:
    """The video's frame count, from its packets (no decoding; a fragmented MP4's header has none)."""
    with _open(source) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def make_spritesheet(source: Path | bytes) -> tuple[bytes, SpritesheetLayout]:
    """The spritesheet of an MP4 (a path or its bytes) as JPEG bytes, and its layout. ValueError if
    the video cannot be decoded; FileNotFoundError if the path is gone."""
    try:
        return _make(source)
    except FileNotFoundError:
        raise
    except av.FFmpegError as exc:
        raise ValueError(f"the video cannot be decoded: {exc}") from exc


def _make(source: Path | bytes) -> tuple[bytes, SpritesheetLayout]:
    frame_count = count_frames(source)
    if frame_count == 0:
        raise ValueError("the video has no frames")
    layout = SpritesheetLayout.for_frames(frame_count)
    tiles = {index: tile for tile, index in enumerate(layout.frame_indices)}  # distinct: tiles <= frames
    sheet: Image.Image | None = None
    with _open(source) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in tiles:
                image = frame.to_image()  # RGB
                if sheet is None:
                    sheet = Image.new("RGB", (image.width * layout.columns, image.height * layout.rows))
                sheet.paste(image, layout.tile_box(tiles.pop(index), image.width, image.height)[:2])
                if not tiles:
                    break
    if sheet is None or tiles:
        raise ValueError(
            f"the video decoded to fewer frames than its {frame_count} packets: "
            f"frames {sorted(tiles)} are missing"
        )
    buffer = io.BytesIO()
    # 4:4:4: the tiles of our small videos are a few dozen pixels; halving their colour resolution
    # again (on top of the MP4's 4:2:0) smears small objects' edges.
    sheet.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue(), layout


def _open(source: Path | bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
