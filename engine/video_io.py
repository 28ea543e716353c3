"""MP4 encoding with PyAV: H.264, yuv420p, a finished file with faststart."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) video, got shape {tuple(video.shape)}")
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18) -> bytes:
    """Encode (T, H, W, 3) uint8 frames as an H.264 yuv420p MP4 with the moov atom up front."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    # faststart rewrites the file to move the moov box up front, which needs a real file.
    with tempfile.TemporaryDirectory(prefix="hyv-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        _encode_to_file(frames, fps, crf, path)
        return path.read_bytes()


def _encode_to_file(frames: np.ndarray, fps: int, crf: int, path: Path) -> None:
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps))
    logger.info("wrote %s (%d frames, %d bytes)", path, len(frames), path.stat().st_size)
    return path


def read_mp4(data: bytes | str | Path) -> np.ndarray:
    """Decode an MP4 back to (T, H, W, 3) uint8, for tests and evaluation."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source, mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
