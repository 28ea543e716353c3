"""The warm pipeline on tiny random models: T2V, I2V, true CFG, distilled schedules, streaming,
determinism, cancellation and request validation."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import re
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from hyv.engine.bundle import BUNDLE_PRESETS, ModelBundle, init_random_bundle, save_bundle
from hyv.engine.memory_options import VAETileSizes
from hyv.engine.offload import blocks
from hyv.engine.pipeline import (
    SCHEDULE_METADATA_KEY,
    GenerationCancelledError,
    PipelineOptions,
    VideoPipeline,
)
from hyv.engine.placement import plan_placement
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.kernels.attention import get_attention_backend, set_attention_backend
from hyv.models import HunyuanVideoDiT, VAETiling, dit_preset, save_dit

PROMPT = "a red circle moving left on a black background"


def _bundle(image_condition: str | None = None, guidance_embed: bool = True) -> ModelBundle:
    bundle = init_random_bundle("tiny", seed=0)
    config = dit_preset("tiny").replace(image_condition=image_condition, guidance_embed=guidance_embed)
    torch.manual_seed(1)
    bundle.dit = HunyuanVideoDiT(config)
    for param in bundle.dit.parameters():  # random, not zero-gated: every input must matter
        param.data.normal_(0.0, 0.1)
    return bundle


@pytest.fixture(scope="module")
def pipeline() -> VideoPipeline:
    return VideoPipeline(_bundle(), PipelineOptions())


@pytest.fixture(scope="module")
def i2v_pipeline() -> VideoPipeline:
    return VideoPipeline(_bundle("latent_concat"), PipelineOptions())


def _png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_t2v_gives_requested_video_and_is_deterministic(pipeline: VideoPipeline) -> None:
    request = GenerationRequest(prompt=PROMPT, width=32, height=48, num_frames=9, fps=10, steps=2, seed=7)
    events = []
    result = pipeline.generate(request, on_progress=events.append)
    frames = read_mp4(result.mp4)
    assert frames.shape == (9, 48, 32, 3)
    assert result.plan.seed == 7 and set(result.timings) == {"text_encode", "denoise", "decode", "encode"}
    assert [(e.stage, e.step) for e in events if e.stage == "denoise"] == [("denoise", 1), ("denoise", 2)]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    assert pipeline.generate(request).mp4 == result.mp4  # same seed -> byte-identical MP4
    other = pipeline.generate(request.model_copy(update={"seed": 8}))
    assert np.abs(read_mp4(other.mp4).astype(int) - frames.astype(int)).mean() > 1.0


def test_defaults_come_from_the_bundle(pipeline: VideoPipeline) -> None:
    plan = pipeline.plan(GenerationRequest(prompt=PROMPT))
    limits = BUNDLE_PRESETS["tiny"].limits
    assert (plan.width, plan.height, plan.num_frames, plan.steps) == (
        limits.width,
        limits.height,
        limits.num_frames,
        limits.steps,
    )
    assert 0 <= plan.seed < 2**31


def test_stream_is_a_playable_fragmented_mp4_that_starts_before_decoding_ends() -> None:
    # Time tiles of 4 frames (1 latent) make the 9-frame video decode in several chunks.
    options = PipelineOptions(vae_tiling=VAETiling(sample_size=64, sample_frames=4, overlap=0.0))
    pipeline = VideoPipeline(_bundle(), options)
    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, steps=2, seed=1)
    decoded_at_first_byte = None
    decoded = [0, 0]  # tiles done, tiles

    def on_progress(event) -> None:
        if event.stage == "decode":
            decoded[:] = [event.step, event.total]

    summary: dict[str, object] = {}
    chunks = []
    for chunk in pipeline.stream(request, on_progress=on_progress, result=summary):
        if b"moof" in chunk and decoded_at_first_byte is None:
            decoded_at_first_byte = decoded[0]
        chunks.append(chunk)
    assert chunks[0].startswith(b"\x00\x00\x00") and b"ftyp" in chunks[0][:8] and b"moov" in chunks[0]
    assert decoded_at_first_byte is not None and decoded_at_first_byte < decoded[1] == 2, (
        "first frames only after full decode"
    )
    data = b"".join(chunks)
    assert b"moof" in data and data.index(b"moov") < data.index(b"moof")
    streamed = read_mp4(data)
    assert streamed.shape == (9, 32, 32, 3)
    finished = read_mp4(pipeline.generate(request).mp4)
    assert np.abs(streamed.astype(int) - finished.astype(int)).mean() < 3.0
    assert 0 < summary["first_byte_s"] < summary["first_fragment_s"] < summary["total_s"]  # type: ignore[operator]
    print(
        f"stream: first byte {summary['first_byte_s']}s, first fragment {summary['first_fragment_s']}s, "
        f"total {summary['total_s']}s"
    )


def test_i2v_puts_the_image_latent_in_frame_zero(i2v_pipeline: VideoPipeline) -> None:
    request = GenerationRequest(
        prompt=PROMPT, image=_png(80, 40), width=32, height=32, num_frames=9, steps=2, seed=0
    )
    plan = i2v_pipeline.plan(request)
    with torch.inference_mode():
        cond = i2v_pipeline._image_condition(plan)
        assert cond is not None and cond.shape == (1, 17, 3, 4, 4)
        assert torch.all(cond[:, 16, 0] == 1) and torch.all(cond[:, 16, 1:] == 0)
        assert torch.all(cond[:, :16, 1:] == 0) and cond[:, :16, 0].abs().sum() > 0
        t2v = i2v_pipeline._image_condition(i2v_pipeline.plan(request.model_copy(update={"image": None})))
        assert t2v is not None and torch.all(t2v == 0)  # no image: zero latent and mask = T2V
        # The generated first latent frame is the image's own latent, exactly.
        text, uncond = i2v_pipeline._encode_text(plan)
        latents = i2v_pipeline._denoise(plan, text, uncond, cond, None, lambda: None)
        assert torch.equal(latents[:, :, :1], cond[:, :16, :1])
        t2v_plan = i2v_pipeline.plan(request.model_copy(update={"image": None}))
        free = i2v_pipeline._denoise(t2v_plan, text, uncond, t2v, None, lambda: None)
        assert free[:, :, :1].abs().mean() > 0.1  # T2V: frame 0 is the model's, not pinned to zeros
    with_image = read_mp4(i2v_pipeline.generate(request).mp4)
    without = read_mp4(i2v_pipeline.generate(request.model_copy(update={"image": None})).mp4)
    assert with_image.shape == without.shape == (9, 32, 32, 3)
    assert np.abs(with_image.astype(int) - without.astype(int)).mean() > 0.5


def test_true_cfg_batches_both_branches_in_one_forward() -> None:
    pipeline = VideoPipeline(_bundle(guidance_embed=False), PipelineOptions())
    batches = []
    hook = pipeline.dit.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        request = GenerationRequest(
            prompt=PROMPT, negative_prompt="blurry", width=32, height=32, num_frames=5, steps=3, guidance=4.0
        )
        pipeline.generate(request)
        assert batches == [2, 2, 2]  # one forward per step, uncond + cond batched
        batches.clear()
        pipeline.generate(request.model_copy(update={"guidance": 1.0}))
        assert batches == [1, 1, 1]  # guidance 1 is the conditional model alone
    finally:
        hook.remove()


def test_true_cfg_can_be_forced_on_a_model_with_an_untrained_guidance_embedding() -> None:
    bundle = _bundle()  # has a guidance embedding: one forward per step by default
    pipeline = VideoPipeline(bundle, PipelineOptions(true_cfg=True))
    seen: list[tuple[int, float]] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        guidance = args[5] if len(args) > 5 else kwargs.get("guidance")
        seen.append((args[0].shape[0], float(guidance[0])))

    handle = pipeline.dit.register_forward_hook(hook, with_kwargs=True)
    try:
        request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=5, steps=2, guidance=6.0)
        forced = read_mp4(pipeline.generate(request).mp4)
        # Two branches per step; the embedding gets the base value 1.0 the teacher was trained with.
        assert seen == [(2, 1000.0), (2, 1000.0)]
        seen.clear()
        embedded = read_mp4(VideoPipeline(bundle, PipelineOptions(true_cfg=False)).generate(request).mp4)
    finally:
        handle.remove()
    assert forced.shape == embedded.shape and np.abs(forced.astype(int) - embedded.astype(int)).mean() > 0.5


def test_step_distilled_schedule_comes_from_the_weights_metadata(tmp_path) -> None:
    bundle = _bundle()
    save_bundle(bundle, tmp_path)
    sigmas = [1.0, 0.9, 0.5, 0.0]
    save_dit(bundle.dit, tmp_path / "dit", metadata={SCHEDULE_METADATA_KEY: json.dumps(sigmas)})
    pipeline = VideoPipeline.from_dir(tmp_path, PipelineOptions())
    assert pipeline.schedule == sigmas
    seen = []
    hook = pipeline.dit.register_forward_hook(lambda m, args, out: seen.append(round(args[1][0].item(), 3)))
    try:
        pipeline.generate(GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=5))
    finally:
        hook.remove()
    assert seen == [1000.0, 900.0, 500.0]
    with pytest.raises(ValueError, match="exactly 3 steps"):
        pipeline.plan(GenerationRequest(prompt=PROMPT, steps=8))


def test_cancel_stops_within_one_step(pipeline: VideoPipeline) -> None:
    cancel = threading.Event()
    steps = []

    def on_progress(event) -> None:
        if event.stage == "denoise":
            steps.append(event.step)
            if event.step == 1:
                cancel.set()

    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=5, steps=10)
    with pytest.raises(GenerationCancelledError):
        pipeline.generate(request, on_progress=on_progress, cancel=cancel)
    assert steps == [1]
    # Nothing of the cancelled job stays alive: no tensor of its latent shape is still referenced.
    latent_shape = (1, 16, 2, 4, 4)
    leftovers = [
        o for o in gc.get_objects() if isinstance(o, torch.Tensor) and tuple(o.shape) == latent_shape
    ]
    assert leftovers == []
    assert pipeline.generate(request.model_copy(update={"steps": 1})).mp4  # the pipeline is still usable


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 40}, "width must be a multiple of 16"),
        ({"height": 128}, "height must be a multiple of 16 in [16, 64]"),
        ({"num_frames": 8}, "num_frames must be 4n+1"),
        ({"num_frames": 13}, "num_frames must be 4n+1 in [1, 9]"),
        ({"image": b"not an image"}, "image could not be read"),
    ],
)
def test_bad_requests_raise_clear_errors(i2v_pipeline: VideoPipeline, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        i2v_pipeline.plan(GenerationRequest(prompt=PROMPT, **fields))


def test_image_on_a_t2v_model_and_empty_prompt_are_refused(pipeline: VideoPipeline) -> None:
    with pytest.raises(ValueError, match="text-to-video only"):
        pipeline.plan(GenerationRequest(prompt=PROMPT, image=_png(32, 32)))
    with pytest.raises(ValidationError, match="prompt"):
        GenerationRequest(prompt="   ")
    with pytest.raises(ValidationError, match="prompt"):
        GenerationRequest(prompt="")


MEMORY_OPTIONS = {
    "text_encoder_offload": PipelineOptions(text_encoder="offload"),
    "text_encoder_cpu": PipelineOptions(text_encoder="cpu"),
    "model_offload": PipelineOptions(model_offload=True),
    "offload_blocks": PipelineOptions(offload_blocks=True),
    "model_and_block_offload": PipelineOptions(model_offload=True, offload_blocks=True),
    "compile_blocks": PipelineOptions(compile_blocks=True),
    "attention_sdpa": PipelineOptions(attention_backend="torch"),
}
OPTIONS_REQUEST = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=5, steps=2, seed=0)


@pytest.fixture(scope="module")
def default_video() -> np.ndarray:
    return read_mp4(
        VideoPipeline(init_random_bundle("tiny"), PipelineOptions()).generate(OPTIONS_REQUEST).mp4
    )


@pytest.fixture
def attention_backend_reset() -> Iterator[None]:
    """attention_backend is process-wide (hyv.kernels.attention): back to automatic after the test."""
    yield
    set_attention_backend(None)


@pytest.mark.parametrize("name", list(MEMORY_OPTIONS))
def test_memory_and_compile_options_give_the_same_video(
    name: str, default_video: np.ndarray, attention_backend_reset: None
) -> None:
    options = MEMORY_OPTIONS[name]
    pipeline = VideoPipeline(init_random_bundle("tiny"), options)
    result = pipeline.generate(OPTIONS_REQUEST)
    # Same math, but not always the same bits: seen once in a full-suite run on a fresh clone (and
    # never alone), the CPU GEMM kernels can round differently with another memory layout, and x264
    # turns a one-level pixel change into a few differing bytes. A real bug (a skipped block, a
    # wrong dtype) changes a random-weight video everywhere.
    diff = np.abs(read_mp4(result.mp4).astype(int) - default_video.astype(int))
    assert diff.mean() < 0.25 and diff.max() <= 8, (diff.mean(), diff.max())
    assert result.peak_memory_bytes > 0 and result.memory_kind
    # Between jobs every component is at its home, and its weights are there.
    plan = plan_placement(options.text_encoder, options.model_offload)
    assert pipeline.placement.location == {component: plan[component].home for component in plan}
    for component, module in (
        ("text_encoder", pipeline.text_encoder),
        ("dit", pipeline.dit),
        ("vae", pipeline.vae),
    ):
        assert _devices(module) == {pipeline.placement.torch_device(plan[component].home)}, component
    # Each visiting component went where it runs and back, once per use (the T2V job uses each once).
    visiting = [c for c in ("text_encoder", "dit", "vae") if plan[c].visits]
    expected_moves = [(c, where) for c in visiting for where in (plan[c].runs_on, plan[c].home)]
    assert [(move.component, move.to) for move in pipeline.placement.moves] == expected_moves
    if name == "attention_sdpa":
        assert get_attention_backend() == "sdpa"


def _devices(module: object) -> set[torch.device]:
    modules = [module] if isinstance(module, torch.nn.Module) else []
    return {p.device for m in modules for p in m.parameters()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (here the device is the CPU)")
@pytest.mark.parametrize(
    "name", ["text_encoder_offload", "text_encoder_cpu", "model_offload", "model_and_block_offload"]
)
def test_on_a_gpu_the_weights_are_where_the_placement_says(name: str) -> None:
    options = dataclasses.replace(MEMORY_OPTIONS[name], device="cuda", dtype=torch.bfloat16)
    pipeline = VideoPipeline(init_random_bundle("tiny"), options)
    modules = {"text_encoder": pipeline.text_encoder, "dit": pipeline.dit, "vae": pipeline.vae.decoder}
    ran_on: dict[str, str] = {}

    def record(component: str) -> Callable[..., None]:
        return lambda module, args: ran_on.setdefault(component, next(module.parameters()).device.type)

    hooks = [module.register_forward_pre_hook(record(c)) for c, module in modules.items()]
    try:
        pipeline.generate(OPTIONS_REQUEST)
    finally:
        for hook in hooks:
            hook.remove()
    plan = plan_placement(options.text_encoder, options.model_offload)
    assert ran_on == {c: "cuda" if plan[c].runs_on == "device" else "cpu" for c in modules}
    for component, module in modules.items():
        home = "cuda" if plan[component].home == "device" else "cpu"
        assert {p.device.type for p in module.parameters()} == {home}, component


@pytest.mark.parametrize(
    ("text_encoder", "model_offload", "homes", "runs_on"),
    [
        ("device", False, ("device", "device", "device"), ("device", "device", "device")),
        ("offload", False, ("cpu", "device", "device"), ("device", "device", "device")),
        ("cpu", False, ("cpu", "device", "device"), ("cpu", "device", "device")),
        ("device", True, ("cpu", "cpu", "cpu"), ("device", "device", "device")),
        ("offload", True, ("cpu", "cpu", "cpu"), ("device", "device", "device")),
        ("cpu", True, ("cpu", "cpu", "cpu"), ("cpu", "device", "device")),
    ],
)
def test_placement_plan(text_encoder: str, model_offload: bool, homes: tuple, runs_on: tuple) -> None:
    """(text encoder, DiT, VAE): where each lives between jobs and where it runs."""
    plan = plan_placement(text_encoder, model_offload)
    assert tuple(plan[c].home for c in ("text_encoder", "dit", "vae")) == homes
    assert tuple(plan[c].runs_on for c in ("text_encoder", "dit", "vae")) == runs_on


def test_model_offload_puts_one_component_on_the_device_at_a_time() -> None:
    """Where the placement says each component is at the moment each one computes (I2V: the VAE
    also encodes the image, before the DiT runs)."""
    pipeline = VideoPipeline(_bundle("latent_concat"), PipelineOptions(model_offload=True))
    seen: list[tuple[str, dict[str, str]]] = []

    def record(component: str) -> Callable[..., None]:
        return lambda module, args: seen.append((component, dict(pipeline.placement.location)))

    hooks = [
        pipeline.text_encoder.register_forward_pre_hook(record("text_encoder")),
        pipeline.dit.register_forward_pre_hook(record("dit")),
        pipeline.vae.encoder.register_forward_pre_hook(record("vae_encode")),
        pipeline.vae.decoder.register_forward_pre_hook(record("vae_decode")),
    ]
    try:
        request = GenerationRequest(
            prompt=PROMPT, image=_png(32, 32), width=32, height=32, num_frames=5, steps=2
        )
        pipeline.generate(request)
    finally:
        for hook in hooks:
            hook.remove()
    alone = {
        "text_encoder": {"text_encoder": "device", "dit": "cpu", "vae": "cpu"},
        "vae_encode": {"text_encoder": "cpu", "dit": "cpu", "vae": "device"},
        "dit": {"text_encoder": "cpu", "dit": "device", "vae": "cpu"},
        "vae_decode": {"text_encoder": "cpu", "dit": "cpu", "vae": "device"},
    }
    assert [component for component, _ in seen] == ["text_encoder", "vae_encode", "dit", "dit", "vae_decode"]
    for component, location in seen:
        assert location == alone[component], component
    assert pipeline.placement.location == {"text_encoder": "cpu", "dit": "cpu", "vae": "cpu"}


def test_a_cancelled_job_sends_the_offloaded_dit_home() -> None:
    pipeline = VideoPipeline(_bundle(), PipelineOptions(model_offload=True))
    cancel = threading.Event()

    def on_progress(event) -> None:
        if event.stage == "denoise":
            assert pipeline.placement.location["dit"] == "device"
            cancel.set()

    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=5, steps=5)
    with pytest.raises(GenerationCancelledError):
        pipeline.generate(request, on_progress=on_progress, cancel=cancel)
    assert pipeline.placement.location == {"text_encoder": "cpu", "dit": "cpu", "vae": "cpu"}
    assert [(m.component, m.to) for m in pipeline.placement.moves][-2:] == [("dit", "device"), ("dit", "cpu")]


def test_vae_tile_sizes_are_applied_on_the_vaes_own() -> None:
    bundle = _bundle()
    own = bundle.vae.config.tiling()
    tiles = VAETileSizes(sample_frames=4, overlap=0.0)
    pipeline = VideoPipeline(bundle, PipelineOptions(vae_tiling=tiles))
    assert pipeline.vae_tiling == VAETiling(sample_size=own.sample_size, sample_frames=4, overlap=0.0)
    assert VideoPipeline(_bundle(), PipelineOptions()).vae_tiling == own
    decoded: list[int] = []
    request = GenerationRequest(prompt=PROMPT, width=32, height=32, num_frames=9, steps=2, seed=1)
    video = read_mp4(
        pipeline.generate(
            request, on_progress=lambda e: decoded.append(e.step) if e.stage == "decode" else None
        ).mp4
    )
    assert decoded == [0, 1, 2]  # two time tiles; the VAE's own 64-frame tiles decode it in one
    # The same tiles given whole: the same video, to the byte.
    given_whole = VideoPipeline(_bundle(), PipelineOptions(vae_tiling=pipeline.vae_tiling)).generate(request)
    assert read_mp4(given_whole.mp4).tobytes() == video.tobytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"text_encoder": "gpu"}, "text encoder placement must be one of device, offload, cpu, got 'gpu'"),
        ({"attention_backend": "cudnn"}, "unknown attention backend 'cudnn'; choose one of auto, fa3, fa2"),
        ({"vae_tiling": VAETileSizes(sample_size=100)}, "must be a positive multiple of 8, got 100"),
    ],
)
def test_invalid_memory_options_are_refused_at_load(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        VideoPipeline(_bundle(), PipelineOptions(**options))


def test_an_attention_backend_that_cannot_run_here_is_refused_with_the_installed_ones(
    attention_backend_reset: None,
) -> None:
    with pytest.raises(
        ValueError, match=r"attention backend 'fa2' cannot run here: .*\(installed here: .*sdpa\)"
    ):
        VideoPipeline(_bundle(), PipelineOptions(attention_backend="flash"))  # on the CPU: never
    assert get_attention_backend() is None  # the refused choice was not applied


def test_warm_up_runs_one_step_at_the_serving_size_per_prompt_length(pipeline: VideoPipeline) -> None:
    shapes: list[tuple[int, ...]] = []
    texts: list[int] = []

    def record(module, args) -> None:
        shapes.append(tuple(args[0].shape))
        texts.append(int(args[3].sum()))  # the prompt's tokens

    hooks = [
        pipeline.dit.register_forward_pre_hook(record),
        pipeline.vae.decoder.register_forward_pre_hook(lambda m, a: shapes.append(("decoded",))),
    ]
    try:
        seconds = pipeline.warm_up()
    finally:
        for hook in hooks:
            hook.remove()
    plan = pipeline.plan(GenerationRequest(prompt=PROMPT))  # the model's default size
    assert shapes == [(1, 16, plan.latent_frames, plan.height // 8, plan.width // 8)] * 2  # not decoded
    assert texts[0] < texts[1]  # two prompt lengths
    assert seconds > 0


@pytest.mark.slow
def test_after_warm_up_the_first_job_compiles_nothing_new() -> None:
    """The compiler's graphs counted before and after the first job (dynamo's eager backend: its
    guards and recompilations are torch.compile's, without inductor's minutes of code generation)."""
    from torch._dynamo.utils import counters

    pipeline = VideoPipeline(init_random_bundle("tiny"), PipelineOptions())
    for block in blocks(pipeline.dit):
        block.compile(backend="eager")
    torch._dynamo.reset()
    pipeline.warm_up()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    pipeline.generate(GenerationRequest(prompt="a green square jumping over a small blue ball", steps=2))
    assert counters["stats"]["unique_graphs"] == graphs


def test_random_bundles_are_reproducible_in_any_dtype() -> None:
    a, b = init_random_bundle("tiny", seed=5), init_random_bundle("tiny", seed=5)
    for (name, pa), pb in zip(a.dit.state_dict().items(), b.dit.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    half = init_random_bundle("tiny", seed=5, dtype=torch.bfloat16)
    assert {p.dtype for p in half.dit.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
