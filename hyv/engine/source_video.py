"""A source video for video-to-video (edit, remix) and extension: decode, check, fit to the plan.

Fit rule: every frame follows the image rule of hyv.engine.image_cond (scale to cover the target
size, center-crop). An edit takes the source's first `num_frames` frames (a shorter source is
refused: the edit re-noises the source's own frames, it cannot invent missing ones); an extension
conditions on the source's last frame and keeps every source frame in front of the new ones.

torch-free, like image_cond: the API probes uploads with `probe_video` before queuing them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from PIL import Image

from hyv.engine.image_cond import fit_image

if TYPE_CHECKING:
    import torch

MAX_SOURCE_FRAMES = 1024  # a chain of extensions grows; beyond this a source is refused
MAX_SOURCE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class VideoInfo:
    """What the API needs to plan a job on a source video (read from its stream, nothing decoded
    beyond counting frames)."""

    width: int
    height: int
    num_frames: int
    fps: float


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise ValueError("the source video is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise ValueError(
            f"the source video cannot be read ({exc.__class__.__name__}): not a video file"
        ) from None
    if not container.streams.video:
        container.close()
        raise ValueError("the source file has no video stream")
    return container


def probe_video(data: bytes) -> VideoInfo:
    """Size, frame count and frame rate of an encoded video; ValueError naming what is wrong.
    Every frame is decoded (a count in the header can lie) but none is converted to pixels."""
    with _open(data) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
        count = sum(1 for _ in _decoded(container))
    return VideoInfo(width=stream.width, height=stream.height, num_frames=count, fps=rate)


def decode_frames(data: bytes) -> np.ndarray:
    """Every frame of an encoded video as (T, H, W, 3) uint8."""
    with _open(data) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in _decoded(container)])


def _decoded(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    """The video stream's frames, checked: at most MAX_SOURCE_PIXELS each, at most
    MAX_SOURCE_FRAMES, at least one; ValueError naming what is wrong."""
    stream = container.streams.video[0]
    if stream.width * stream.height > MAX_SOURCE_PIXELS:
        raise ValueError(
            f"the source video is {stream.width}x{stream.height}, over {MAX_SOURCE_PIXELS} pixels"
        )
    count = 0
    try:
        for frame in container.decode(video=0):
            count += 1
            if count > MAX_SOURCE_FRAMES:
                raise ValueError(f"the source video has more than {MAX_SOURCE_FRAMES} frames")
            yield frame
    except av.error.FFmpegError as exc:
        raise ValueError(f"the source video is corrupt ({exc.__class__.__name__})") from None
    if not count:
        raise ValueError("the source video has no frames")


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, H, W, 3) uint8 scaled to cover width x height and center-cropped, frame by frame."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(fit_image(Image.fromarray(f), width, height)) for f in frames])


def frames_to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1], the VAE's input."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(frames)).float()  # (T, H, W, 3) in [0, 255]
    return (pixels / 127.5 - 1.0).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)


def frame_png(frame: np.ndarray) -> bytes:
    """One (H, W, 3) uint8 frame as PNG bytes: the conditioning image of an extension."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()
