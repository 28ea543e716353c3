import numpy as np
import pytest
import torch

from engine.video_io import encode_mp4, read_mp4, video_to_uint8


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

    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"


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
        (np.zeros((2, 32, 32, 3), np.uint8), 0, "fps"),
    ],
)
def test_bad_frames_are_named(frames, fps, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames, fps)
