"""Progress through every stage on the tiny bundle: the VAE's decode reports each decoder pass (a
spatial tile of a time tile), the pipeline turns that into the decode stage's tiles done / tiles and
the encode stage's frames encoded / frames, in generate and stream alike, monotone up to 1.0."""

from __future__ import annotations

import threading

import pytest
import torch

from hyv.engine.bundle import init_random_bundle
from hyv.engine.pipeline import GenerationCancelledError, PipelineOptions, Progress, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.models import VAETiling
from hyv.models.vae import CausalVAE3D

PROMPT = "a red circle moving left on a black background"
STAGES = ["text_encode", "denoise", "decode", "encode"]
# 16 px (2 latent) spatial tiles and 4-frame (1 latent) time tiles, no overlap: a 32x32x9 video
# decodes in 2 time tiles (its 3 latent frames: the trailing single-frame window is dropped) of
# 2 x 2 spatial tiles each.
SMALL_TILES = VAETiling(sample_size=16, sample_frames=4, overlap=0.0)


@pytest.fixture(scope="module")
def vae() -> CausalVAE3D:
    return init_random_bundle("tiny", seed=0).vae.eval()


@pytest.mark.parametrize(
    ("tiling", "latent_shape", "tiles"),
    [
        (SMALL_TILES, (1, 16, 3, 4, 4), 2 * 2 * 2),
        (VAETiling(sample_size=32, sample_frames=8, overlap=0.5), (1, 16, 5, 6, 4), 4 * 3 * 2),
        (VAETiling(sample_size=16, sample_frames=8, overlap=0.5), (1, 16, 6, 5, 3), 5 * 5 * 3),
        (None, (1, 16, 5, 4, 4), 1),  # the VAE's own tiles: one pass
    ],
)
def test_decode_calls_back_once_per_tile(
    vae: CausalVAE3D, tiling: VAETiling | None, latent_shape: tuple[int, ...], tiles: int
) -> None:
    passes: list[int] = []
    hook = vae.decoder.register_forward_hook(lambda *_: passes.append(len(passes)))
    seen: list[tuple[int, int]] = []
    z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            chunks = list(vae.iter_decode(z, tiling, lambda done, total: seen.append((done, total))))
            calls = len(passes)
            plain = vae.decode(z, tiling=tiling)
    finally:
        hook.remove()
    assert vae.decode_tile_count(latent_shape, tiling) == tiles == calls
    assert seen == [(done, tiles) for done in range(1, tiles + 1)]
    assert torch.equal(torch.cat(chunks, dim=2), plain)  # the callback changes nothing decoded


def _events(
    pipeline: VideoPipeline, request: GenerationRequest, streamed: bool
) -> tuple[list[Progress], bytes]:
    events: list[Progress] = []
    if streamed:
        data = b"".join(pipeline.stream(request, on_progress=events.append))
    else:
        data = pipeline.generate(request, on_progress=events.append).mp4
    return events, data


@pytest.mark.parametrize("streamed", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(("tiling", "tiles"), [(SMALL_TILES, 8), (None, 1)], ids=["small_tiles", "own_tiles"])
def test_every_stage_reports_until_done(streamed: bool, tiling: VAETiling | None, tiles: int) -> None:
    pipeline = VideoPipeline(init_random_bundle("tiny", seed=0), PipelineOptions(vae_tiling=tiling))
    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, steps=2, seed=3)
    events, data = _events(pipeline, request, streamed)
    assert read_mp4(data).shape == (9, 32, 32, 3)

    stages = [STAGES.index(e.stage) for e in events]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2, 3}
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    decode = [(e.step, e.total) for e in events if e.stage == "decode"]
    assert decode == [(done, tiles) for done in range(tiles + 1)]
    encode = [(e.step, e.total) for e in events if e.stage == "encode"]
    assert {total for _, total in encode} == {9} and encode[-1] == (9, 9)
    steps = [step for step, _ in encode]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    # generate encodes every frame after decoding; stream pushed the first time tile's frames (5)
    # while the second was decoding, and reports the rest frame by frame.
    first = 5 if streamed and tiles > 1 else 0
    assert steps == list(range(first, 10))


def test_a_cancel_during_decode_stops_at_the_next_tile() -> None:
    pipeline = VideoPipeline(init_random_bundle("tiny", seed=0), PipelineOptions(vae_tiling=SMALL_TILES))
    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, steps=2, seed=3)
    cancel = threading.Event()
    decoded: list[int] = []

    def on_progress(event: Progress) -> None:
        if event.stage == "decode":
            decoded.append(event.step)
            if event.step == 3:
                cancel.set()

    with pytest.raises(GenerationCancelledError):
        pipeline.generate(request, on_progress=on_progress, cancel=cancel)
    assert decoded == [0, 1, 2, 3]  # of 8 tiles: stopped inside the first time tile
