import io
import logging
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from hyv.engine.video_io import (
    FragmentedMP4Encoder,
    StreamStats,
    encode_mp4,
    mp4_boxes,
    read_mp4,
    stream_mp4,
    video_to_uint8,
    write_mp4,
)

FPS = 8
T, H, W = 20, 32, 48


def moving_gradient(frames: int = T, height: int = H, width: int = W) -> np.ndarray:
    """Smooth, moving content: compresses like real video, unlike noise (which x264 makes all-intra)."""
    t = np.arange(frames)[:, None, None]
    yy, xx = np.mgrid[0:height, 0:width]
    # periodic and unsaturated, so no hard edges: the error left is the codec's, not chroma subsampling's
    red = 128 + 90 * np.sin(2 * np.pi * (xx[None] + 2 * t) / width)
    green = 128 + 90 * np.sin(2 * np.pi * (yy[None] + t) / height)
    blue = np.broadcast_to(40 + 170 * t / max(frames - 1, 1), red.shape)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def probe(data: bytes) -> tuple[int, int, int, Fraction | None, Fraction | None, str, str]:
    """(decoded frames, width, height, average_rate, guessed_rate, codec, pix_fmt) of an MP4 in memory."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(video=0))
        ctx = stream.codec_context
        return count, ctx.width, ctx.height, stream.average_rate, stream.guessed_rate, ctx.name, ctx.pix_fmt


def through_yuv420p(frames: np.ndarray) -> np.ndarray:
    """The frames after the RGB -> yuv420p -> RGB round trip alone: the best any yuv420p codec can do."""
    return np.stack(
        [
            av.VideoFrame.from_ndarray(f, format="rgb24")
            .reformat(format="yuv420p")
            .to_ndarray(format="rgb24")
            for f in frames
        ]
    )


def chunks_of(frames: np.ndarray, size: int) -> list[np.ndarray]:
    return [frames[i : i + size] for i in range(0, len(frames), size)]


# --- finished file ---------------------------------------------------------------------------------


def test_mp4_round_trip_is_h264_faststart_and_close():
    t = np.linspace(0, 1, 9)[:, None, None, None]
    yy, xx = np.mgrid[0:32, 0:48]
    frames = np.concatenate(
        [
            (t * 255 * np.ones((1, 32, 48, 1))),
            (xx / 47 * 255)[None, ..., None] * np.ones((9, 1, 1, 1)),
            (yy / 31 * 255)[None, ..., None] * np.ones((9, 1, 1, 1)),
        ],
        axis=-1,
    ).astype(np.uint8)
    data = encode_mp4(frames, fps=8)
    # faststart: the moov box comes before mdat
    assert data.find(b"moov") < data.find(b"mdat")
    decoded = read_mp4(data)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4.0

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"


def test_finished_file_has_requested_frames_size_and_fps():
    frames = moving_gradient()
    data = encode_mp4(frames, fps=FPS)
    kinds = [kind for kind, _, _ in mp4_boxes(data)]
    assert kinds.index("moov") < kinds.index("mdat")
    assert "moof" not in kinds
    count, width, height, average, guessed, codec, pix_fmt = probe(data)
    assert (count, width, height) == (T, W, H)
    assert average == FPS and guessed == FPS
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.streams.video[0].frames == T  # sample count in the moov agrees


def test_encode_mp4_accepts_chunks_like_one_array(tmp_path):
    frames = moving_gradient()
    whole = read_mp4(encode_mp4(frames, FPS))
    chunked = read_mp4(encode_mp4(iter(chunks_of(frames, 7)), FPS))
    # Not bit-exact: libx264 with its default lookahead/mbtree is not reproducible run to run here
    # (same input, different bytes), so compare like two encodes of the same frames.
    assert chunked.shape == whole.shape == frames.shape
    assert mean_abs_error(chunked, whole) < 2.5
    path = write_mp4(iter(chunks_of(frames, 5)), tmp_path / "out" / "v.mp4", FPS)
    assert read_mp4(path).shape == frames.shape


def test_video_to_uint8_maps_range():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    frames = video_to_uint8(video)
    assert frames.shape == (4, 1, 1, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize(
    ("frames", "fps", "message"),
    [
        (np.zeros((2, 31, 32, 3), np.uint8), 8, "even"),
        (np.zeros((2, 32, 32), np.uint8), 8, "uint8"),
        (np.zeros((2, 32, 32, 3), np.float32), 8, "uint8"),
        (np.zeros((2, 32, 32, 3), np.uint8), 0, "fps"),
        (np.zeros((2, 32, 32, 3), np.uint8), 7.5, "fps"),
    ],
)
def test_bad_frames_are_named(frames, fps, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames, fps)


def test_encode_mp4_rejects_bad_chunks():
    with pytest.raises(ValueError, match="no frames"):
        encode_mp4(iter([]), FPS)
    mixed = [np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 48, 3), np.uint8)]
    with pytest.raises(ValueError, match="does not match"):
        encode_mp4(iter(mixed), FPS)


# --- fragmented stream -----------------------------------------------------------------------------


def encode_fragmented(frames: np.ndarray, chunk: int, **kwargs) -> list[bytes]:
    with FragmentedMP4Encoder(W, H, FPS, **kwargs) as encoder:
        out = [encoder.push(part) for part in chunks_of(frames, chunk)]
        out.append(encoder.finish())
    return out


def test_fragmented_chunks_concatenate_to_a_playable_mp4_with_the_same_frames():
    frames = moving_gradient()
    pieces = encode_fragmented(frames, chunk=3, gop=4)
    stream = b"".join(pieces)

    # layout: init segment (ftyp, moov) first, then one moof+mdat per GOP, then the mfra index
    kinds = [kind for kind, _, _ in mp4_boxes(stream)]
    assert kinds[:2] == ["ftyp", "moov"]
    assert kinds.index("moov") < kinds.index("moof")
    assert kinds.count("moof") == kinds.count("mdat") == -(-T // 4)
    assert kinds[-1] == "mfra"
    # every push returned whole boxes: each piece starts at a box boundary, so it can be sent as is
    starts = {offset for _, offset, _ in mp4_boxes(stream)}
    offsets = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    assert all(int(o) in starts for o, p in zip(offsets, pieces, strict=True) if p)

    count, width, height, average, _, codec, pix_fmt = probe(stream)
    assert (count, width, height, average, codec, pix_fmt) == (T, W, H, FPS, "h264", "yuv420p")
    streamed = read_mp4(stream)
    finished = read_mp4(encode_mp4(frames, FPS))
    assert streamed.shape == finished.shape == frames.shape
    # Both outputs sit close to the source as yuv420p can carry it (chroma subsampling alone costs
    # ~3.4 levels on this pattern; the codec adds ~1.5) and close to each other.
    reference = through_yuv420p(frames)
    assert mean_abs_error(streamed, reference) < 2.5
    assert mean_abs_error(finished, reference) < 2.5
    assert mean_abs_error(streamed, finished) < 2.5


def test_first_push_returns_the_init_segment():
    frames = moving_gradient()
    with FragmentedMP4Encoder(W, H, FPS, gop=4) as encoder:
        assert encoder.init_size > 0  # written when the encoder opened, before any frame
        first = encoder.push(frames[:1])
        assert [kind for kind, _, _ in mp4_boxes(first)] == ["ftyp", "moov"]
        assert len(first) == encoder.init_size
        assert encoder.push(frames[1:4]) == b""  # GOP 1 is still open: nothing final yet
        assert mp4_boxes(encoder.push(frames[4]))[0][0] == "moof"  # keyframe 5 closes GOP 1
        encoder.finish()
        assert encoder.finished and encoder.frames == 5


def test_pushes_are_independent_of_chunking():
    frames = moving_gradient()
    one = b"".join(encode_fragmented(frames, chunk=T, gop=5))
    many = b"".join(encode_fragmented(frames, chunk=1, gop=5))
    # frames are stamped by index, so grouping them differently into pushes changes nothing
    # (zerolatency has no lookahead, and has been reproducible where the default settings are not)
    assert [k for k, _, _ in mp4_boxes(one)] == [k for k, _, _ in mp4_boxes(many)]
    assert mean_abs_error(read_mp4(one), read_mp4(many)) < 0.5


def test_stream_mp4_yields_bytes_before_the_frames_run_out():
    frames = moving_gradient()
    parts = chunks_of(frames, 4)  # like VAE time tiles
    produced = 0

    def decoder() -> Iterator[np.ndarray]:
        nonlocal produced
        for part in parts:
            time.sleep(0.01)  # stands in for decode work, so timings are visible
            produced += 1
            yield part

    stats = StreamStats(started_at=time.perf_counter())
    stream = stream_mp4(decoder(), W, H, FPS, gop=4, stats=stats)
    seen: list[tuple[int, bytes]] = []
    for data in stream:
        seen.append((produced, data))
    # the init segment goes out before a single frame is decoded ...
    assert seen[0][0] == 0 and mp4_boxes(seen[0][1])[0][0] == "ftyp"
    # ... and the first media fragment while the decoder still has chunks to produce
    first_media = next(count for count, data in seen if b"moof" in data)
    assert first_media < len(parts)
    assert stats.first_byte_s is not None and stats.first_fragment_s is not None
    assert stats.finished_s is not None
    assert stats.first_byte_s <= stats.first_fragment_s < stats.finished_s
    assert stats.frames == T and stats.chunks == len(seen)
    data = b"".join(d for _, d in seen)
    assert stats.total_bytes == len(data)
    assert probe(data)[:4] == (T, W, H, FPS)
    logging.getLogger(__name__).info(
        "first byte %.4f s, first fragment %.4f s (after %d of %d chunks), total %.4f s",
        stats.first_byte_s, stats.first_fragment_s, first_media, len(parts), stats.finished_s,
    )  # fmt: skip


def test_stream_mp4_releases_the_encoder_when_the_source_fails():
    def broken() -> Iterator[np.ndarray]:
        yield moving_gradient(4)
        raise RuntimeError("decoder died")

    stream = stream_mp4(broken(), W, H, FPS)
    with pytest.raises(RuntimeError, match="decoder died"):
        list(stream)


def test_stream_mp4_checks_arguments_before_iterating():
    with pytest.raises(ValueError, match="even"):
        stream_mp4(iter([]), 33, 32, FPS)  # no next() needed: the error is not deferred


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 31}, "even"),
        ({"height": 0}, "positive"),
        ({"fps": 0}, "fps"),
        ({"fps": True}, "fps"),
        ({"crf": 60}, "crf"),
        ({"gop": 0}, "gop"),
    ],
)
def test_fragmented_encoder_rejects_bad_settings(kwargs, message):
    settings = {"width": W, "height": H, "fps": FPS} | kwargs
    with pytest.raises(ValueError, match=message):
        FragmentedMP4Encoder(**settings)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, H, W, 3), np.float32), "uint8"),
        (np.zeros((2, H, W), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, H, W + 2, 3), np.uint8), "does not match"),
        ([np.zeros((H, W, 3), np.uint8)], "numpy array"),
    ],
)
def test_fragmented_encoder_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message), FragmentedMP4Encoder(W, H, FPS) as encoder:
        encoder.push(frames)


def test_push_after_finish_is_an_error():
    encoder = FragmentedMP4Encoder(W, H, FPS)
    encoder.push(moving_gradient(2))
    encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError, match="finish"):
        encoder.push(moving_gradient(2))


def test_same_frames_give_the_same_bytes() -> None:
    # Smooth motion made x264's threaded lookahead produce different files from identical input.
    t = np.arange(17)[:, None, None]
    yy, xx = np.mgrid[0:64, 0:80]
    frames = np.stack(
        [np.sin((xx[None] + 3 * t) / 9.0) * 120 + 128, np.cos((yy[None] - 2 * t) / 7.0) * 120 + 128,
         (xx[None] + yy[None] + t) % 256], axis=-1).astype(np.uint8)  # fmt: skip
    assert len({encode_mp4(frames, fps=8) for _ in range(6)}) == 1
    streams = set()
    for _ in range(6):
        encoder = FragmentedMP4Encoder(80, 64, 8)
        streams.add(encoder.pending() + encoder.push(frames) + encoder.finish())
    assert len(streams) == 1
