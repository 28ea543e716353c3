"""Every size and length the bundled model advertises draws one object in every frame, on the
prompt's background from the first frame on.

The buckets are read from weights/hyv-small/bundle.json (`buckets` x `frame_counts`), so a bundle
trained and evaluated at more sizes and lengths is checked at all of them without editing this
file. The failures this guards against are the ones a model shows outside its training sizes: at
twice its size the object is repeated (the judge counts 4 copies at 128x128 for a model trained at
64x64), at twice its length the first frames are empty and the object grows out of nothing.

Each clip goes through `VideoPipeline.generate` as the service and `hyv generate` run it (the MP4
included) and is read back and judged by `hyv.training.eval.judge.judge_clip`: per frame the count
of objects (the object plus any stray blob larger than 1% of the frame), and on frame 0 alone the
background. Those failures hold for a whole clip (4 copies in every frame, the first frames
empty); a blob in one frame is a different, occasional artifact (a fast object tearing for a frame
at a latent-frame boundary: hyv-small's "green triangle moving up" at 64x96x17, frame 6), whose
rate `hyv train eval` measures as clean frames (>= 95% per bucket, issue 23's bar; 99.5-100% in
the card). So: the object in every frame, a second one in at most one frame of a clip, never three.
Whether the object has the prompt's color, shape and motion is a rate, not a property
of one clip: `hyv train eval` measures it per bucket on the 44 held-out combinations and the model
card holds it against issue 23's thresholds (one seed's clip here would make a 97.7% rate a coin).
"""

from __future__ import annotations

import numpy as np
import pytest

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR, read_bundle_spec
from hyv.engine.pipeline import VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.training.data.grammar import BACKGROUND_RGB, is_heldout, parse_caption
from hyv.training.eval.judge import judge_clip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Held-out combinations (never seen in training; listed in weights/hyv-small/MODEL_CARD.md): a
# circle on gray and a triangle on black, the two shapes and backgrounds that show repetition
# and empty leading frames most plainly.
PROMPTS = (
    "a blue circle moving right on a gray background",
    "a green triangle moving up on a black background",
)
SEED = 0

LIMITS = read_bundle_spec(DEFAULT_BUNDLE_DIR).limits
BUCKETS = [
    (width, height, frames)
    for width, height in (LIMITS.buckets or ((LIMITS.width, LIMITS.height),))
    for frames in (LIMITS.frame_counts or (LIMITS.num_frames,))
]


def test_the_bundle_lists_its_buckets_and_the_prompts_are_held_out() -> None:
    assert LIMITS.buckets and LIMITS.frame_counts, "bundle.json must list the sizes and lengths it serves"
    card = (DEFAULT_BUNDLE_DIR / "MODEL_CARD.md").read_text()
    for prompt in PROMPTS:
        assert is_heldout(parse_caption(prompt)) and f"- {prompt}\n" in card


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(("width", "height", "frames"), BUCKETS, ids=[f"{w}x{h}x{n}" for w, h, n in BUCKETS])
def test_every_bucket_draws_one_object_in_every_frame(
    bundled_pipeline: VideoPipeline, prompt: str, width: int, height: int, frames: int
) -> None:
    expected = parse_caption(prompt)
    request = GenerationRequest(prompt=prompt, width=width, height=height, num_frames=frames, seed=SEED)
    video = read_mp4(bundled_pipeline.generate(request).mp4)
    assert video.shape == (frames, height, width, 3)
    clip = judge_clip(video, background=expected.background)
    # The object in every frame (no empty frames), no repeated copies: a second blob in at most one
    # frame (a one-frame tear, counted by the card's clean-frame rate), never a third.
    assert min(clip.objects) == 1 and max(clip.objects) <= 2, f"objects per frame {clip.objects} ({clip})"
    assert sum(n == 2 for n in clip.objects) <= 1, f"objects per frame {clip.objects} ({clip})"
    # No black (or otherwise wrong) leading frames: frame 0 shows the prompt's background.
    first = judge_clip(video[:1])
    assert first.background == expected.background, first
    measured = np.median(np.concatenate([video[0, 0], video[0, -1], video[0, :, 0], video[0, :, -1]]), axis=0)
    assert np.abs(measured - np.array(BACKGROUND_RGB[expected.background])).max() < 40, measured
