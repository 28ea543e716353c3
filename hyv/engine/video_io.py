"""MP4 encoding with PyAV: H.264, yuv420p.

Two outputs from the same frames:

- `encode_mp4` / `write_mp4`: a finished file with faststart (moov before mdat), for downloads;
- `FragmentedMP4Encoder` / `stream_mp4`: a fragmented MP4 produced while frames are still being
  decoded, for streaming.

The fragmented encoder muxes into an in-memory, non-seekable sink with
`movflags=frag_keyframe+empty_moov+default_base_moof`:

- `empty_moov` writes `ftyp`+`moov` (with the avcC decoder config, no samples) as soon as the
  encoder opens, so the init segment is the first thing out, before any frame is encoded;
- `frag_keyframe` cuts a `moof`+`mdat` fragment at every keyframe, so a fragment is written the
  moment the *next* GOP's keyframe is muxed (the last one at `finish`); a short GOP therefore bounds
  how long encoded frames sit in the muxer;
- `default_base_moof` makes each fragment's data offsets relative to its own `moof`, so fragments
  need no knowledge of absolute file positions (what MSE and a non-seekable sink want).

The concatenation of everything returned is one playable fragmented MP4 (ending with an `mfra`
index written at close). `stream_mp4` wraps this as a generator over frame chunks and records the
time to the first byte and to the first media fragment in a `StreamStats`.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

# The same frames must give the same bytes, so the same seed gives the same MP4. x264's threaded
# lookahead made the bitstream depend on thread timing (3 different files from 12 encodes); with
# one lookahead thread, the x264 in PyAV 16-18's wheels still gave 2-4 different files in 100
# encodes, single-threaded too, unless its assembly was off or macroblock-tree rate control was:
# without mbtree, 150 of 150 were identical (files ~30% larger at the same CRF on a test clip).
REPRODUCIBLE_X264_PARAMS = "lookahead-threads=1:sync-lookahead=0:mbtree=0"

Frames = np.ndarray | Iterable[np.ndarray]
"""(T, H, W, 3) uint8 frames, or an iterable of such chunks (e.g. VAE time tiles) of one size."""


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) video, got shape {tuple(video.shape)}")
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)


def check_fps(fps: int) -> None:
    # bool is an int subclass; True fps is a bug, not 1 fps.
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")


def check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    # yuv420p subsamples chroma 2x2, so x264 rejects odd dimensions.
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")


def check_frames(frames: np.ndarray, width: int | None = None, height: int | None = None) -> None:
    """Raise ValueError unless `frames` is (T, H, W, 3) uint8 with even H, W (and the given size)."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"expected (T, H, W, 3) uint8 frames as a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    _, h, w, _ = frames.shape
    check_size(w, h)
    if (width is not None and w != width) or (height is not None and h != height):
        raise ValueError(f"frame size {w}x{h} does not match the stream's {width}x{height}")


def iter_frame_chunks(frames: Frames) -> Iterator[np.ndarray]:
    """One (T, H, W, 3) array, or an iterable of them, as a stream of validated same-size chunks."""
    if isinstance(frames, np.ndarray):
        check_frames(frames)
        yield frames
        return
    size: tuple[int, int] | None = None
    for chunk in frames:
        check_frames(chunk, *(size or (None, None)))
        size = size or (chunk.shape[2], chunk.shape[1])
        yield chunk


def to_video_frame(frame: np.ndarray, index: int, fps: int) -> av.VideoFrame:
    """An RGB frame stamped pts=index in a 1/fps time base, so timing never depends on call grouping."""
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    video_frame.pts = index
    video_frame.time_base = Fraction(1, fps)
    return video_frame


def encode_mp4(frames: Frames, fps: int, crf: int = 18) -> bytes:
    """Encode (T, H, W, 3) uint8 frames as an H.264 yuv420p MP4 with the moov atom up front.

    `frames` may also be an iterable of (T_i, H, W, 3) chunks, so a caller decoding time tile by time
    tile never has to hold the whole video as uint8; the encoded file is the same.
    """
    if isinstance(frames, np.ndarray):  # validate eagerly: the historical error order is shape, size, fps
        check_frames(frames)
    check_fps(fps)
    # faststart rewrites the file to move the moov box up front, which needs a real file.
    with tempfile.TemporaryDirectory(prefix="hyv-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        _encode_to_file(iter_frame_chunks(frames), fps, crf, path)
        return path.read_bytes()


def _encode_to_file(chunks: Iterator[np.ndarray], fps: int, crf: int, path: Path) -> None:
    # The first chunk fixes the stream size; pull it before opening the output so a bad or empty
    # input leaves no half-written container behind.
    first = next(chunks, None)
    if first is None:
        raise ValueError("no frames to encode")
    _, height, width, _ = first.shape
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": REPRODUCIBLE_X264_PARAMS}
        index = 0
        for chunk in _prepend(first, chunks):
            for frame in chunk:
                container.mux(stream.encode(to_video_frame(frame, index, fps)))
                index += 1
        container.mux(stream.encode())


def _prepend(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def write_mp4(frames: Frames, path: str | Path, fps: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps))
    logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return path


def read_mp4(data: bytes | str | Path) -> np.ndarray:
    """Decode an MP4 back to (T, H, W, 3) uint8, for tests and evaluation."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source, mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def mp4_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level MP4 boxes as (type, offset, size), to check a file's layout (moov first, fragments)."""
    boxes: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8].decode("latin-1")
        if size == 1:  # 64-bit largesize follows the type
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        if size < 8 or offset + size > len(data):
            raise ValueError(f"truncated or corrupt MP4: box {kind!r} at {offset} claims {size} bytes")
        boxes.append((kind, offset, size))
        offset += size
    if offset != len(data):
        raise ValueError(f"truncated MP4: {len(data) - offset} trailing bytes at {offset}")
    return boxes


# --- fragmented MP4 streaming ---------------------------------------------------------------------

FRAGMENT_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"

# x264 settings for streaming, chosen so that a packet comes out of `encode()` for every frame pushed:
# - tune=zerolatency: no B-frames (bframes=0), no rc-lookahead / mbtree, sliced instead of frame
#   threads. With frame threads (1.5x the cores) and a lookahead (capped at the GOP), x264 holds frames
#   back, so a GOP's fragment can only be written about one more GOP later (measured at gop=12:
#   first fragment after 13 frames with zerolatency, 26 with tune=film). The price is compression:
#   ~2.5x the bytes of tune=film at the same crf on smooth synthetic motion. Pass
#   `x264_options={"tune": "film"}` to trade that latency for size; `encode_mp4` keeps the defaults.
# - scenecut=0: keyframes exactly every `gop` frames, so fragments are regular. Otherwise x264 may
#   add IDR frames on fast motion, giving irregular, tiny fragments and a bigger stream.
# `x264_options` entries replace these keys whole (a given "x264-params" drops scenecut=0).
DEFAULT_X264_OPTIONS: Mapping[str, str] = {
    "preset": "medium",
    "tune": "zerolatency",
    "x264-params": f"scenecut=0:{REPRODUCIBLE_X264_PARAMS}",
}


def default_gop(fps: int) -> int:
    """Half a second of video per GOP (= per fragment): short enough to stream, long enough to compress."""
    return max(1, fps // 2)


class _ByteSink:
    """A write-only file object for PyAV. Having no `seek`/`tell` makes the output non-seekable, so
    libavformat never goes back to patch earlier bytes: whatever it wrote is final and can be sent."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.total = 0

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.total += len(data)
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class FragmentedMP4Encoder:
    """Incremental H.264 yuv420p fragmented-MP4 encoder into memory.

    `push(frames)` encodes (N, H, W, 3) uint8 frames and returns the MP4 bytes that became final
    (the `ftyp`+`moov` init segment on the first call, then whole `moof`+`mdat` fragments as
    keyframes close them); `finish()` flushes the encoder and returns the rest. Concatenated, the
    returned bytes are one playable MP4. Use as a context manager to release the encoder on error.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        crf: int = 18,
        gop: int | None = None,
        x264_options: Mapping[str, str] | None = None,
    ) -> None:
        check_size(width, height)
        check_fps(fps)
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51] for 8-bit H.264, got {crf}")
        gop = default_gop(fps) if gop is None else gop
        if gop < 1:
            raise ValueError(f"gop must be at least 1 frame, got {gop}")
        self.width, self.height, self.fps, self.gop = width, height, fps, gop
        self.frames = 0  # frames pushed so far
        self._finished = False
        self._sink = _ByteSink()
        self._container = av.open(
            self._sink, mode="w", format="mp4", container_options={"movflags": FRAGMENT_MOVFLAGS}
        )
        try:
            self._stream = self._container.add_stream("libx264", rate=fps)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            self._stream.gop_size = gop
            self._stream.options = {**DEFAULT_X264_OPTIONS, **(x264_options or {}), "crf": str(crf)}
            # Open the codec and write the header now: x264 emits SPS/PPS at open (global header),
            # so the complete init segment exists before the first frame, and a bad option fails here
            # rather than in the middle of a stream.
            self._container.start_encoding()
        except BaseException:
            self._container.close()
            raise
        self.init_size = self._sink.total  # bytes of ftyp+moov; everything after is media fragments
        logger.debug("fragmented mp4 %dx%d@%d gop=%d: init segment %d bytes", width, height, fps, gop,
                     self.init_size)  # fmt: skip

    @property
    def finished(self) -> bool:
        return self._finished

    def pending(self) -> bytes:
        """The bytes already final but not yet returned: right after construction, the init
        segment (ftyp + moov), which a server can send before the first frame is decoded."""
        return self._sink.drain()

    def push(self, frames: np.ndarray) -> bytes:
        """Encode (N, H, W, 3) uint8 frames (or one (H, W, 3) frame); return the MP4 bytes now final."""
        if self._finished:
            raise RuntimeError("push() after finish(): the MP4 stream is already closed")
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]
        check_frames(frames, self.width, self.height)
        for frame in frames:
            self._container.mux(self._stream.encode(to_video_frame(frame, self.frames, self.fps)))
            self.frames += 1
        return self._sink.drain()

    def finish(self) -> bytes:
        """Flush the encoder, write the last fragment and the `mfra` index; return the remaining bytes."""
        if self._finished:
            return b""
        self._finished = True
        if self.frames == 0:
            logger.warning("finishing a fragmented MP4 with no frames: the stream is not playable")
        try:
            self._container.mux(self._stream.encode())  # drain delayed packets (none with zerolatency)
        finally:
            # Closing writes the trailer: the last fragment (no next keyframe will close it) + mfra.
            self._container.close()
        return self._sink.drain()

    def close(self) -> None:
        """Release the encoder without returning the tail; for error paths."""
        if not self._finished:
            self._finished = True
            try:
                self._container.close()
            except Exception:  # the stream is being abandoned: a trailer failure must not mask the cause
                logger.debug("closing an abandoned fragmented MP4 failed", exc_info=True)

    def __enter__(self) -> FragmentedMP4Encoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self._finished:
            logger.warning("fragmented MP4 encoder left without finish(): the stream's tail is dropped")
        self.close()


@dataclass
class StreamStats:
    """Progress of one `stream_mp4` stream, filled in while it runs (times in seconds from `started_at`)."""

    started_at: float  # time.perf_counter() at the reference point (request start, say)
    first_byte_s: float | None = None  # first MP4 byte (the init segment) handed out
    first_fragment_s: float | None = None  # first media fragment handed out: playback can begin
    finished_s: float | None = None
    frames: int = 0
    chunks: int = 0  # byte chunks yielded
    total_bytes: int = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at


def stream_mp4(
    frame_chunks: Iterable[np.ndarray],
    width: int,
    height: int,
    fps: int,
    *,
    crf: int = 18,
    gop: int | None = None,
    stats: StreamStats | None = None,
) -> Iterator[bytes]:
    """Yield fragmented-MP4 bytes as (N, H, W, 3) uint8 frame chunks arrive.

    The init segment is yielded before the first chunk is pulled, then whatever became final after
    each chunk (empty results are skipped). Pass `stats` (with `started_at` at the request start) to
    read the time to the first byte and first fragment; without it the timings are only logged.
    """
    # Validate before the first next(): a generator would otherwise report bad arguments late.
    encoder = FragmentedMP4Encoder(width, height, fps, crf=crf, gop=gop)
    return _stream(encoder, frame_chunks, stats or StreamStats(started_at=time.perf_counter()))


def _stream(
    encoder: FragmentedMP4Encoder, frame_chunks: Iterable[np.ndarray], stats: StreamStats
) -> Iterator[bytes]:
    def emit(data: bytes) -> bytes:
        stats.chunks += 1
        stats.total_bytes += len(data)
        if stats.first_byte_s is None:
            stats.first_byte_s = stats.elapsed()
            logger.info("mp4 stream: first byte after %.3f s", stats.first_byte_s)
        if stats.first_fragment_s is None and stats.total_bytes > encoder.init_size:
            stats.first_fragment_s = stats.elapsed()
            logger.info("mp4 stream: first fragment after %.3f s (%d frames in)", stats.first_fragment_s,
                        stats.frames)  # fmt: skip
        return data

    with encoder:
        yield emit(encoder.push(np.empty((0, encoder.height, encoder.width, 3), np.uint8)))
        for chunk in frame_chunks:
            data = encoder.push(chunk)
            stats.frames = encoder.frames
            if data:
                yield emit(data)
        tail = encoder.finish()
        if tail:
            yield emit(tail)
    stats.finished_s = stats.elapsed()
    logger.info("mp4 stream: %d frames, %d bytes in %d chunks, %.3f s", stats.frames, stats.total_bytes,
                stats.chunks, stats.finished_s)  # fmt: skip
