"""hyv.service.spritesheet on real MP4s (H.264 through PyAV, finished and fragmented as the worker
writes them): the grid for each length, the evenly spaced frames (first and last included), and
tiles that are those frames (PSNR against the decoded MP4)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hyv.engine.video_io import encode_mp4, read_mp4, stream_mp4
from hyv.service.spritesheet import SpritesheetLayout, make_spritesheet
from hyv.training.eval.metrics import psnr


def moving_square(frames: int, width: int = 48, height: int = 32) -> np.ndarray:
    """A white square crossing a dark gradient, one step per frame: every frame differs."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 2] = np.linspace(20, 120, width, dtype=np.uint8)[None, None, :]
    for t in range(frames):
        x = round(t * (width - 12) / max(frames - 1, 1))
        video[t, 10:22, x : x + 12] = 235
    return video


def tiles_of(jpeg: bytes, layout: SpritesheetLayout, width: int, height: int) -> list[np.ndarray]:
    sheet = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert sheet.shape == (layout.rows * height, layout.columns * width, 3)
    return [
        sheet[top:bottom, left:right]
        for left, top, right, bottom in (
            layout.tile_box(i, width, height) for i in range(len(layout.frame_indices))
        )
    ]


@pytest.mark.parametrize(
    ("frames", "grid", "indices"),
    [
        (1, (1, 1), (0,)),
        (2, (2, 1), (0, 1)),
        (3, (3, 1), (0, 1, 2)),
        (4, (2, 2), (0, 1, 2, 3)),
        (5, (2, 2), (0, 1, 3, 4)),
        (9, (3, 3), tuple(range(9))),
        (13, (3, 3), (0, 2, 3, 4, 6, 8, 9, 10, 12)),
        (16, (4, 4), tuple(range(16))),
        (17, (4, 4), (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16)),
        (33, (4, 4), (0, 2, 4, 6, 9, 11, 13, 15, 17, 19, 21, 23, 26, 28, 30, 32)),
        (129, (4, 4), tuple(round(i * 128 / 15) for i in range(16))),
    ],
)
def test_layout_is_the_largest_full_square_up_to_4x4(
    frames: int, grid: tuple[int, int], indices: tuple[int, ...]
) -> None:
    layout = SpritesheetLayout.for_frames(frames)
    assert (layout.columns, layout.rows) == grid
    assert layout.frame_indices == indices
    assert indices[0] == 0 and indices[-1] == frames - 1
    assert list(indices) == sorted(set(indices))  # distinct, in order


def test_layout_refuses_an_empty_video() -> None:
    with pytest.raises(ValueError, match="at least one frame, got 0"):
        SpritesheetLayout.for_frames(0)


@pytest.mark.parametrize(
    ("frames", "encoding"), [(17, "finished"), (9, "fragmented"), (5, "finished"), (1, "fragmented")]
)
def test_tiles_are_the_evenly_spaced_frames(tmp_path: Path, frames: int, encoding: str) -> None:
    video = moving_square(frames)
    if encoding == "finished":
        data = encode_mp4(video, fps=8)
    else:  # what the worker stores: the fragmented MP4 it streamed while rendering
        data = b"".join(stream_mp4([video[: frames // 2 + 1], video[frames // 2 + 1 :]], 48, 32, 8))
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    decoded = read_mp4(path)
    assert decoded.shape == video.shape

    jpeg, layout = make_spritesheet(path)
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert make_spritesheet(data)[0] == jpeg  # from bytes, the same sheet
    tiles = tiles_of(jpeg, layout, 48, 32)
    for tile, index in zip(tiles, layout.frame_indices, strict=True):
        assert psnr(tile, decoded[index]) > 30, (index, psnr(tile, decoded[index]))
        if frames > 1:  # and not a neighbour: the index is the right one
            other = index + 1 if index + 1 < frames else index - 1
            assert psnr(tile, decoded[other]) < psnr(tile, decoded[index]) - 3


def test_a_file_that_is_not_a_video_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    with pytest.raises(ValueError, match="cannot be decoded"):
        make_spritesheet(path)
    with pytest.raises(FileNotFoundError):
        make_spritesheet(tmp_path / "gone.mp4")
