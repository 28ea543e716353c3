"""The warm generation pipeline: text encoder, DiT and VAE loaded once, requests in, MP4s out.

    pipeline = VideoPipeline.from_dir("weights/hyv-small")
    result = pipeline.generate(GenerationRequest(prompt="a red circle moving left on a black background"))
    for chunk in pipeline.stream(request):   # fragmented MP4, bytes as frames are decoded
        ...

Stages: text_encode -> denoise (flow-matching Euler, embedded guidance or true CFG) -> decode
(temporal tiles of the causal VAE) -> encode (H.264). `on_progress` sees every step; `cancel`
is polled after every denoising step and decoded tile, so a cancelled job stops within one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hyv.engine import memory
from hyv.engine.bundle import BUNDLE_FILE, ModelBundle, load_bundle
from hyv.engine.bundle_spec import GUIDANCE_MODE_METADATA_KEY
from hyv.engine.image_cond import fit_image, image_to_video_tensor, load_image
from hyv.engine.limits import GenerationPlan, resolve
from hyv.engine.lora import LoraLibrary, applied_loras
from hyv.engine.lora_folder import default_lora_dir
from hyv.engine.memory_options import TextEncoderPlacement, VAETileSizes, attention_backend_name
from hyv.engine.placement import Mover, Placement, plan_placement
from hyv.engine.request import GenerationRequest
from hyv.engine.sampling import cfg_combine, edit_schedule, euler_denoise, flow_schedule, noise_to
from hyv.engine.source_video import decode_frames, fit_frames, frame_png, frames_to_video_tensor
from hyv.engine.step_cache import StepCacheConfig
from hyv.engine.step_cache.runner import StepCache
from hyv.engine.video_io import FragmentedMP4Encoder, encode_mp4, video_to_uint8
from hyv.models import TextEmbeddings, VAETiling, from_dit_latents, read_dit_metadata, to_dit_latents
from hyv.models.checkpoint_io import parse_dtype
from hyv.models.fp8 import dequantize_, quantize_dit_

logger = logging.getLogger(__name__)

SCHEDULE_METADATA_KEY = "sampling_sigmas"  # JSON list written by step distillation
# Two prompt lengths: the DiT trims text padding, so the text length varies from job to job, and
# torch.compile makes a size dynamic once it has seen it change (one compilation for all prompts).
WARM_UP_PROMPTS = (
    "warm-up",
    "a longer warm-up prompt, so that the text length is seen to change between runs",
)
STAGE_SPAN = {
    "text_encode": (0.0, 0.02),
    "denoise": (0.02, 0.90),
    "decode": (0.90, 0.98),
    "encode": (0.98, 1.0),
}


class GenerationCancelledError(Exception):
    """Raised out of generate()/stream() when the caller's cancel signal is set."""


@dataclass(frozen=True)
class Progress:
    stage: str  # text_encode | denoise | decode | encode
    step: int  # done of total: 1 of 1 (text_encode), steps, VAE decoder tiles, encoded frames
    total: int

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1]."""
        start, end = STAGE_SPAN[self.stage]
        return start + (end - start) * (self.step / self.total if self.total else 0.0)


ProgressFn = Callable[[Progress], None]
CancelSignal = threading.Event | Callable[[], bool] | None


@dataclass
class GenerationResult:
    mp4: bytes
    plan: GenerationPlan
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    step_cache: dict[str, object] | None = None  # StepCacheStats.summary(): block stacks computed/skipped

    def summary(self) -> dict[str, object]:
        """One JSON-able line: what the CLI prints and the service stores."""
        return {
            "width": self.plan.width,
            "height": self.plan.height,
            "num_frames": self.plan.output_frames,
            "fps": self.plan.fps,
            "steps": self.plan.steps,
            "seed": self.plan.seed,
            "loras": [lora.model_dump() for lora in self.plan.loras],
            "bytes": len(self.mp4),
            "seconds": {k: round(v, 4) for k, v in self.timings.items()},
            "peak_memory_mb": round(self.peak_memory_bytes / 2**20, 1),
            "peak_memory_kind": self.memory_kind,
            "cache": self.step_cache,
        }


@dataclass(frozen=True)
class PipelineOptions:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    # Memory options (hyv.engine.placement; docs/operations.md, "Memory options").
    # device: the text encoder lives on the device; offload: on the CPU, moved to the device to
    # encode each prompt; cpu: it runs on the CPU and only its embeddings move.
    text_encoder: TextEncoderPlacement = "device"
    model_offload: bool = False  # every component on the device only while it runs
    offload_blocks: bool = False  # DiT blocks on the CPU, moved to the device one at a time
    compile_blocks: bool = False  # torch.compile each DiT block (warm_up() compiles before the first job)
    attention_backend: str | None = None  # fa3, fa2, xformers, sdpa; None: HYV_ATTENTION_BACKEND or automatic
    # VAE decode tiles: a VAETiling, or VAETileSizes given in part on top of the VAE's own; None: the
    # VAE's own (smaller tiles need less memory; shorter time tiles stream sooner).
    vae_tiling: VAETiling | VAETileSizes | None = None
    # None: true CFG (two branches per step) exactly when the DiT has no guidance embedding. True forces
    # it on a DiT whose embedding was never trained (a base model before CFG distillation: the teacher).
    true_cfg: bool | None = None
    # None: the DiT as stored. "fp8": its block linears quantized to float8 e4m3 at load
    # (hyv.models.fp8); "bf16"/"fp16"/"fp32" (= dtype): an FP8 checkpoint's layers dequantized at load.
    dit_dtype: str | None = None
    # The step cache of requests that name none (hyv.engine.step_cache); None: off.
    default_cache: StepCacheConfig | None = None

    def __post_init__(self) -> None:
        plan_placement(self.text_encoder, self.model_offload)  # ValueError on an unknown placement
        object.__setattr__(self, "attention_backend", attention_backend_name(self.attention_backend))


def default_device_and_dtype() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


DIT_DTYPES = ("fp8", "bf16", "fp16", "fp32")


def apply_dit_dtype(dit: torch.nn.Module, options: PipelineOptions) -> None:
    """Quantize (dit_dtype "fp8") or dequantize (a high-precision dit_dtype) the DiT's FP8 layers
    in place, before it moves to the device: a 13B quantized on the CPU needs half the GPU memory."""
    if options.dit_dtype is None:
        return
    if options.dit_dtype not in DIT_DTYPES:
        raise ValueError(f"unknown dit_dtype {options.dit_dtype!r}; choose one of {DIT_DTYPES} or None")
    if options.dit_dtype == "fp8":
        quantize_dit_(dit)
        return
    if parse_dtype(options.dit_dtype) != options.dtype:
        raise ValueError(
            f"dit_dtype={options.dit_dtype!r} but dtype={options.dtype}: the DiT computes in the "
            "pipeline's dtype; a high-precision dit_dtype only dequantizes FP8 weights, so set dtype"
        )
    dequantize_(dit)


def weight_bytes(component: object) -> int:
    """Bytes of a component's parameters and buffers: an nn.Module's, or those of the modules an
    object holds (a text encoder made of an LLM and CLIP)."""
    modules = (
        [component]
        if isinstance(component, torch.nn.Module)
        else [value for value in vars(component).values() if isinstance(value, torch.nn.Module)]
    )
    return sum(
        tensor.numel() * tensor.element_size()
        for module in modules
        for tensors in (module.parameters(), module.buffers())
        for tensor in tensors
    )


def use_attention_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    """Make `name` the process's attention backend (hyv.kernels.attention) once it is known to run on
    this device and dtype; ValueError says why not and which backends are installed here."""
    from hyv.kernels.attention import (
        available_backends,
        canonical_backend,
        select_backend,
        set_attention_backend,
    )

    backend = canonical_backend(name)
    probe = torch.empty(1, 1, 1, head_dim, device=device, dtype=dtype)  # (B, L, H, D) like the DiT's
    try:
        select_backend(probe, backend)
    except ValueError as exc:
        raise ValueError(f"{exc} (installed here: {', '.join(available_backends())})") from exc
    set_attention_backend(backend)


CPU_ALIGNMENT = 64  # bytes: what torch's CPU allocator gives; oneDNN/MKL kernels assume it


def align_cpu_tensors(module: torch.nn.Module) -> int:
    """Copy the CPU parameters and buffers that sit at addresses off CPU_ALIGNMENT; returns how many.

    Memory-mapped weights sit wherever the file put them (a diffusers safetensors file: 8-byte
    offsets). CPU matmul kernels round differently on misaligned inputs, so the same weights
    from two files gave videos a pixel level apart. GPU copies are aligned by their allocator, and
    the 13B never runs on the CPU, so only CPU-served models pay for this copy.
    """
    copied = 0
    for tensors in (module.named_parameters(), module.named_buffers()):
        for _, tensor in tensors:
            if tensor.device.type == "cpu" and tensor.data_ptr() % CPU_ALIGNMENT:
                tensor.data = tensor.data.clone()
                copied += 1
    return copied


class VideoPipeline:
    def __init__(
        self, bundle: ModelBundle, options: PipelineOptions, schedule: list[float] | None = None
    ) -> None:
        if bundle.text_encoder is None:
            raise ValueError(f"bundle {bundle.spec.name} has no text encoder loaded")
        self.bundle = bundle
        self.options = options
        self.schedule = schedule  # a step-distilled student's fixed sigmas, or None
        self.dit = bundle.dit.eval().requires_grad_(False)
        apply_dit_dtype(self.dit, options)
        self.vae = bundle.vae.eval().requires_grad_(False)
        self.text_encoder = bundle.text_encoder
        self.device = torch.device(options.device)
        if options.attention_backend is not None:
            use_attention_backend(
                options.attention_backend, self.device, options.dtype, self.dit.config.head_dim
            )
        self.placement = self._place_components()
        self.visiting_weight_bytes = self._visiting_weight_bytes()
        _ = self.vae_tiling  # tile sizes that do not fit this VAE fail the load, not a job
        if self.device.type == "cpu":
            align_cpu_tensors(self.dit)
            align_cpu_tensors(self.vae)
        if options.compile_blocks:
            for block in [*self.dit.double_blocks, *self.dit.single_blocks]:
                block.compile()
        self.step_cache = StepCache.attach(self.dit, bundle.spec.step_cache_coefficients)
        self.last_step_cache: dict[str, object] | None = None  # the latest job's, read under the lock
        self._lock = threading.Lock()  # one generation at a time per pipeline (one GPU)
        self.loras = LoraLibrary()  # the adapters requests may name (from_dir: the bundle's loras/)

    def _place_components(self) -> Placement:
        """Convert the components to the dtype, then move each to its home (hyv.engine.placement)."""
        options, dit, vae, text_encoder = self.options, self.dit, self.vae, self.text_encoder
        text_encoder.to(dtype=options.dtype)
        vae.to(dtype=options.dtype)

        def move_text_encoder(device: torch.device) -> None:
            text_encoder.to(device=device)

        move_dit: Mover = dit.to
        if options.offload_blocks:  # the blocks stream through the device; the rest is placed as the DiT
            from hyv.engine.offload import move_resident, offload_blocks

            offload_blocks(dit, self.device, options.dtype)
            move_dit = functools.partial(move_resident, dit)
        else:
            dit.to(dtype=options.dtype)
        movers: dict[str, Mover] = {"text_encoder": move_text_encoder, "dit": move_dit, "vae": vae.to}
        return Placement(plan_placement(options.text_encoder, options.model_offload), self.device, movers)

    @property
    def vae_tiling(self) -> VAETiling:
        """The decode tiles: options.vae_tiling, or its given sizes on the VAE's own tiles."""
        tiling = self.options.vae_tiling
        if isinstance(tiling, VAETiling):
            return tiling
        own = self.vae.config.tiling()
        return own if tiling is None else tiling.apply(own)

    def _visiting_weight_bytes(self) -> int:
        """The most weight bytes a job brings onto the device at once beyond what stays there: the
        largest component that visits it (model offload, text encoder offload) plus, with block
        offload, one block. What a job memory limit must leave room for. 0 on the CPU: nothing moves."""
        if self.device.type == "cpu":
            return 0
        sizes = {
            "text_encoder": weight_bytes(self.text_encoder),
            "dit": weight_bytes(self.dit),
            "vae": weight_bytes(self.vae),
        }
        if not self.options.offload_blocks:
            return self.placement.visiting_bytes(sizes)
        from hyv.engine.offload import blocks, largest_block_bytes

        sizes["dit"] -= sum(weight_bytes(block) for block in blocks(self.dit))  # its resident parts
        return self.placement.visiting_bytes(sizes) + largest_block_bytes(self.dit)

    @classmethod
    def from_dir(
        cls,
        weights: str | Path,
        options: PipelineOptions | None = None,
        text_encoder_path: str | Path | None = None,
    ) -> VideoPipeline:
        if options is None:
            device, dtype = default_device_and_dtype()
            options = PipelineOptions(device=device, dtype=dtype)
        weights = Path(weights)
        bundle = load_bundle(weights, device="cpu", dtype=options.dtype, text_encoder_path=text_encoder_path)
        # A release folder (no bundle.json, hyv.engine.release) carries no distilled schedule.
        metadata = read_dit_metadata(weights / "dit") if (weights / BUNDLE_FILE).is_file() else {}
        schedule = json.loads(metadata[SCHEDULE_METADATA_KEY]) if SCHEDULE_METADATA_KEY in metadata else None
        if options.true_cfg is None and metadata.get(GUIDANCE_MODE_METADATA_KEY) == "true_cfg":
            options = dataclasses.replace(options, true_cfg=True)
        pipeline = cls(bundle, options, schedule)
        pipeline.loras = LoraLibrary(default_lora_dir(weights))
        return pipeline

    # --- planning -------------------------------------------------------------------------------

    def plan(self, request: GenerationRequest) -> GenerationPlan:
        """Resolve a request against this model; ValueError with a clear message if it can't run."""
        fixed_steps = len(self.schedule) - 1 if self.schedule else None
        plan = resolve(request, self.bundle.spec.limits, fixed_steps)
        if plan.image is not None and self.dit.config.image_condition is None:
            raise ValueError("this model is text-to-video only: it cannot take an input image")
        if plan.image is not None:
            load_image(plan.image)  # fail fast on an unreadable image, before any model work
        if plan.video is not None:
            plan = self._plan_source(plan)
        self.loras.resolve(plan.loras, self.dit)  # LoraError (a ValueError) before any model work
        return plan

    def _plan_source(self, plan: GenerationPlan) -> GenerationPlan:
        """Check an edit's or extension's source video and keep the frames the run uses, fitted to
        the plan's size; an extension's image is the source's last frame: it runs as image-to-video
        from there."""
        assert plan.video is not None
        frames = decode_frames(plan.video)  # ValueError naming what is wrong with the file
        if plan.video_mode == "edit" and len(frames) < plan.num_frames:
            raise ValueError(
                f"video: the source has {len(frames)} frames; an edit of {plan.num_frames} frames "
                "needs at least as many"
            )
        if plan.video_mode == "extend" and self.dit.config.image_condition is None:
            raise ValueError("this model cannot extend a video: it takes no image condition")
        used = frames[: plan.num_frames] if plan.video_mode == "edit" else frames
        source = fit_frames(used, plan.width, plan.height)
        plan = dataclasses.replace(plan, source_frames=len(frames), source=source)
        if plan.video_mode != "extend":
            return plan
        return dataclasses.replace(plan, image=frame_png(source[-1]))

    # --- public entry points ----------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, on_progress: ProgressFn | None = None, cancel: CancelSignal = None
    ) -> GenerationResult:
        """Run the whole request and return a finished (faststart) MP4."""
        plan = self.plan(request)
        with self._lock, self._run_context() as (timings, peak):
            frames = [video_to_uint8(chunk[0]) for chunk in self._frames(plan, timings, on_progress, cancel)]
            start = time.perf_counter()
            mp4 = encode_mp4(_reporting_encoded(frames, on_progress), plan.fps)
            timings["encode"] = time.perf_counter() - start
            count = sum(len(chunk) for chunk in frames)
            _report(on_progress, "encode", count, count)
        return GenerationResult(mp4, plan, timings, peak.bytes, peak.kind, self.last_step_cache)

    def frames(
        self, request: GenerationRequest, on_progress: ProgressFn | None = None, cancel: CancelSignal = None
    ) -> Iterator[torch.Tensor]:
        """The decoded video chunks (1, 3, n, H, W) in [-1, 1], in order, without encoding them: what
        the non-zero ranks of a sequence-parallel group run while rank 0 runs `stream`."""
        plan = self.plan(request)
        with self._lock, self._run_context() as (timings, _):
            yield from self._frames(plan, timings, on_progress, cancel)

    def stream(
        self,
        request: GenerationRequest,
        on_progress: ProgressFn | None = None,
        cancel: CancelSignal = None,
        result: dict[str, object] | None = None,
    ) -> Iterator[bytes]:
        """Yield a fragmented MP4 as frames are decoded; concatenated chunks are a playable file.

        The first chunk is the init segment (before any model work); media fragments follow as the
        VAE's time tiles are decoded. `result`, if given, receives the summary plus `first_byte_s`
        and `first_fragment_s` (seconds from the call to the first MP4 byte / first playable
        frames) and `total_s` once the stream ends."""
        plan = self.plan(request)
        started = time.perf_counter()
        first_fragment: float | None = None
        decoded = False  # the decode stage's last tile was reported: pushing is the encode stage now

        def watch_decode(progress: Progress) -> None:
            nonlocal decoded
            decoded = decoded or (progress.stage == "decode" and progress.step == progress.total)
            if on_progress is not None:
                on_progress(progress)

        with (
            self._lock,
            self._run_context() as (timings, peak),
            FragmentedMP4Encoder(plan.width, plan.height, plan.fps) as encoder,
        ):
            yield encoder.pending()  # the init segment: the response starts before any model work
            first_byte = time.perf_counter() - started
            encode_s = 0.0
            for chunk in self._frames(plan, timings, watch_decode, cancel):
                t0 = time.perf_counter()
                frames = video_to_uint8(chunk[0])
                if decoded:  # the last chunk: frame by frame, each one reported
                    data = b"".join(_push_reporting(encoder, frames, on_progress))
                else:
                    data = encoder.push(frames)
                encode_s += time.perf_counter() - t0
                if data:
                    first_fragment = first_fragment or time.perf_counter() - started
                    yield data
            t0 = time.perf_counter()
            tail = encoder.finish()
            timings["encode"] = encode_s + time.perf_counter() - t0
            first_fragment = first_fragment or time.perf_counter() - started
            yield tail
            _report(on_progress, "encode", encoder.frames, encoder.frames)
        if result is not None:
            summary = GenerationResult(
                b"", plan, timings, peak.bytes, peak.kind, self.last_step_cache
            ).summary()
            summary.pop("bytes")
            result.update(
                summary,
                first_byte_s=round(first_byte, 4),
                first_fragment_s=round(first_fragment, 4),
                total_s=round(time.perf_counter() - started, 4),
            )

    def warm_up(self) -> float:
        """One denoising step of the model's default request (its serving size), not decoded, for
        each of two prompt lengths: with compile_blocks, torch.compile compiles the DiT blocks here
        rather than in the first job (a video size other than the default compiles once more, on its
        first job). A sequence-parallel group's ranks call it together, after `parallelize`: the
        steps run the group's collectives. Returns the seconds it took."""
        started = time.perf_counter()
        limits = self.bundle.spec.limits
        image = _blank_png(limits.width, limits.height) if limits.requires_image else None
        for prompt in WARM_UP_PROMPTS:
            plan = self.plan(GenerationRequest(prompt=prompt, image=image, seed=0))
            with self._lock, self._run_context():
                cond, uncond = self._encode_text(plan)
                image_cond = self._image_condition(plan)
                self._denoise(plan, cond, uncond, image_cond, None, lambda: None, max_steps=1)
        seconds = time.perf_counter() - started
        logger.info(
            "pipeline warmed up",
            extra={
                "width": plan.width,
                "height": plan.height,
                "num_frames": plan.num_frames,
                "warm_up_s": round(seconds, 3),
            },
        )
        return seconds

    # --- stages ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _run_context(self) -> Iterator[tuple[dict[str, float], memory.PeakMemory]]:
        timings: dict[str, float] = {}
        self.placement.start_job()
        peak = memory.PeakMemory(self.device)
        failed = True
        try:
            with torch.inference_mode():
                yield timings, peak
            failed = False
        finally:
            peak.stop()
            memory.release(self.device, failed)  # a cancelled or failed job leaves nothing cached behind

    def _frames(
        self,
        plan: GenerationPlan,
        timings: dict[str, float],
        on_progress: ProgressFn | None,
        cancel: CancelSignal,
    ) -> Iterator[torch.Tensor]:
        """Decoded video chunks (1, 3, n, H, W) in [-1, 1], in order."""
        check = _cancel_check(cancel)
        self.last_step_cache = None
        source = plan.source
        if plan.video_mode == "extend" and source is not None and len(source) > 1:
            # The source up to its last frame, which the extension's first frame redraws (the
            # image condition, pinned: equal within the VAE's error), so no frame shows twice.
            yield frames_to_video_tensor(source[:-1])
        start = time.perf_counter()
        cond, uncond = self._encode_text(plan)
        image_cond = self._image_condition(plan)
        timings["text_encode"] = time.perf_counter() - start
        _report(on_progress, "text_encode", 1, 1)
        check()

        start = time.perf_counter()
        edited = source if plan.video_mode == "edit" else None
        with applied_loras(self.dit, self.loras.resolve(plan.loras, self.dit)):
            latents = self._denoise(plan, cond, uncond, image_cond, on_progress, check, edited)
        timings["denoise"] = time.perf_counter() - start

        start = time.perf_counter()
        decoded = 0
        with self.placement.running("vae") as vae_device:
            z = from_dit_latents(latents.float(), self.vae.config).to(vae_device, self.options.dtype)
            _report(on_progress, "decode", 0, self.vae.decode_tile_count(z.shape, self.vae_tiling))

            def on_tile(done: int, total: int) -> None:
                _report(on_progress, "decode", done, total)
                check()

            for chunk in self.vae.iter_decode(z, self.vae_tiling, on_tile):
                decoded += chunk.shape[2]
                yield chunk.float()
        timings["decode"] = time.perf_counter() - start
        if decoded != plan.num_frames:
            raise RuntimeError(f"decoded {decoded} frames, expected {plan.num_frames}")

    def _true_cfg(self) -> bool:
        if self.options.true_cfg is not None:
            return self.options.true_cfg
        return not self.dit.config.guidance_embed

    def _encode_text(self, plan: GenerationPlan) -> tuple[TextEmbeddings, TextEmbeddings | None]:
        assert self.text_encoder is not None
        true_cfg = self._true_cfg() and plan.guidance != 1.0
        prompts = [plan.prompt, plan.negative_prompt] if true_cfg else [plan.prompt]
        with self.placement.running("text_encoder"):
            encoded = self.text_encoder.encode(prompts).to(self.device, self.options.dtype)
        cond = TextEmbeddings(encoded.states[:1], encoded.mask[:1], encoded.pooled[:1])
        uncond = (
            TextEmbeddings(encoded.states[1:], encoded.mask[1:], encoded.pooled[1:]) if true_cfg else None
        )
        return cond, uncond

    def _image_condition(self, plan: GenerationPlan) -> torch.Tensor | None:
        """(1, C+1, t, h, w): the image latent in frame 0 and its mask, or zeros for T2V; None for a
        T2V-only model."""
        config = self.dit.config
        if config.image_condition is None:
            return None
        h, w = plan.height // 8, plan.width // 8
        cond = torch.zeros(1, config.latent_channels + 1, plan.latent_frames, h, w, device=self.device)
        if plan.image is not None:
            video = image_to_video_tensor(fit_image(load_image(plan.image), plan.width, plan.height))
            with self.placement.running("vae") as vae_device:
                posterior = self.vae.encode(video.to(vae_device, self.options.dtype), tiled=False)
                latent = to_dit_latents(posterior.mode(), self.vae.config)  # (1, C, 1, h, w)
            cond[:, : config.latent_channels, :1] = latent.to(self.device, cond.dtype)
            cond[:, config.latent_channels :, :1] = 1.0
        return cond.to(self.options.dtype)

    def _denoise(
        self,
        plan: GenerationPlan,
        cond: TextEmbeddings,
        uncond: TextEmbeddings | None,
        image_cond: torch.Tensor | None,
        on_progress: ProgressFn | None,
        check: Callable[[], None],
        edited: np.ndarray | None = None,
        max_steps: int | None = None,
    ) -> torch.Tensor:
        """The denoised latents; `max_steps` stops after that many steps (the warm-up's one).
        `edited`: an edit's source frames (T, H, W, 3) uint8, re-noised to the first sigma of the
        schedule at or below `plan.strength` (SDEdit) instead of starting from pure noise."""
        config = self.dit.config
        shape = (
            1,
            config.latent_channels,
            plan.latent_frames,
            plan.height // 8,
            plan.width // 8,
        )  # (B, C, t, h, w)
        # Noise is drawn on the CPU from the seed: the same seed gives the same video on any device.
        generator = torch.Generator(device="cpu").manual_seed(plan.seed)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(
            self.device, self.options.dtype
        )
        if self.schedule is not None:
            sigmas = torch.tensor(self.schedule, dtype=torch.float64)
        else:
            sigmas = flow_schedule(plan.steps, plan.flow_shift)
        if edited is not None:
            sigmas = edit_schedule(sigmas, plan.strength)
            noise = noise_to(self._encode_video(edited), noise, float(sigmas[0]))
        if max_steps is not None:
            sigmas = sigmas[: max_steps + 1]
        velocity = self._velocity_fn(plan, cond, uncond, image_cond)

        def on_step(step: int, total: int) -> None:
            _report(on_progress, "denoise", step, total)
            check()

        cache = plan.cache or self.options.default_cache
        with self.placement.running("dit"), self.step_cache.trajectory(cache, len(sigmas) - 1) as cache_stats:
            latents = euler_denoise(velocity, noise, sigmas, on_step)
        self.last_step_cache = cache_stats.summary()
        return pin_first_frame(latents, image_cond) if plan.image is not None else latents

    def _encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> the DiT's latents (1, C, t, h, w): the VAE posterior's mode."""
        video = frames_to_video_tensor(frames)
        with self.placement.running("vae") as vae_device:
            posterior = self.vae.encode(video.to(vae_device, self.options.dtype))
            latents = to_dit_latents(posterior.mode(), self.vae.config)
        return latents.to(self.device, self.options.dtype)

    def _velocity_fn(
        self,
        plan: GenerationPlan,
        cond: TextEmbeddings,
        uncond: TextEmbeddings | None,
        image_cond: torch.Tensor | None,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        dit = self.dit
        guidance = None
        if dit.config.guidance_embed:  # guidance-distilled: one forward per step
            embedded = 1.0 if self._true_cfg() else plan.guidance  # the base value it was trained with
            guidance = torch.full((1,), embedded * 1000.0, device=self.device, dtype=self.options.dtype)

        def with_image(latents: torch.Tensor) -> torch.Tensor:
            if image_cond is None:
                return latents
            return torch.cat([latents, image_cond.expand(latents.shape[0], -1, -1, -1, -1)], dim=1)

        if uncond is None:
            return lambda x, t: dit(with_image(x), t, cond.states, cond.mask, cond.pooled, guidance)

        # True CFG: both branches in one batched forward.
        states = torch.cat([uncond.states, cond.states])  # (2, L, D)
        mask = torch.cat([uncond.mask, cond.mask])
        pooled = torch.cat([uncond.pooled, cond.pooled])

        def cfg_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            pair = None if guidance is None else guidance.expand(2)
            v_uncond, v_cond = dit(
                with_image(torch.cat([x, x])), torch.cat([t, t]), states, mask, pooled, pair
            ).chunk(2)
            return cfg_combine(v_uncond, v_cond, plan.guidance)

        return cfg_velocity


def pin_first_frame(latents: torch.Tensor, image_cond: torch.Tensor | None) -> torch.Tensor:
    """I2V: make the first latent frame the image's own latent (the first C channels of frame 0 of
    `image_cond`, (B, C+1, t, h, w)), as HunyuanVideo-I2V's token replacement does: the video starts
    exactly on the user's picture, not on the model's redrawing of it. In place; returns `latents`."""
    if image_cond is not None:
        latents[:, :, :1] = image_cond[:, : latents.shape[1], :1]
    return latents


def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _report(on_progress: ProgressFn | None, stage: str, step: int, total: int) -> None:
    if on_progress is not None:
        on_progress(Progress(stage, step, total))


def _reporting_encoded(frames: list[np.ndarray], on_progress: ProgressFn | None) -> Iterator[np.ndarray]:
    """`frames` (chunks (n, H, W, 3)) one frame at a time for encode_mp4, reporting the encode stage as
    frames encoded / frames: a frame is encoded when the encoder asks for the next one. The caller
    reports the last (all, all) once the file is written."""
    total = sum(len(chunk) for chunk in frames)
    done = 0
    _report(on_progress, "encode", 0, total)
    for chunk in frames:
        for frame in chunk:
            yield frame[None]
            done += 1
            if done < total:
                _report(on_progress, "encode", done, total)


def _push_reporting(
    encoder: FragmentedMP4Encoder, frames: np.ndarray, on_progress: ProgressFn | None
) -> Iterator[bytes]:
    """Push the last decoded chunk (n, H, W, 3) frame by frame, reporting the encode stage as frames
    encoded / frames (those pushed while tiles were still decoding count as done). The caller reports
    the last (all, all) after `encoder.finish()`."""
    total = encoder.frames + len(frames)
    _report(on_progress, "encode", encoder.frames, total)
    for frame in frames:
        yield encoder.push(frame)
        if encoder.frames < total:
            _report(on_progress, "encode", encoder.frames, total)


def _cancel_check(cancel: CancelSignal) -> Callable[[], None]:
    if cancel is None:
        return lambda: None
    is_set = cancel.is_set if isinstance(cancel, threading.Event) else cancel

    def check() -> None:
        if is_set():
            raise GenerationCancelledError("generation cancelled")

    return check
