"""Sizing of the 13B DiT from a trace on the meta device: no GPU, no weights, seconds on a CPU.

`trace_step` builds `HunyuanVideoDiT` from a preset on `torch.device("meta")` (shapes only, no
memory) and runs one denoising forward as the engine does on one GPU of a sequence-parallel
group, counting:

* FLOPs, with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention);
* activation memory: the peak of the bytes held by live tensors created during the step (each
  storage counted once, from its creation until it is freed), under `torch.inference_mode()` as
  the pipeline runs it;
* the kernels' launches (hyv.kernels.aot.record_launches): with triton installed the fused
  kernels take their CUDA path on meta tensors (outputs allocated exactly as on a GPU, the launch
  recorded instead of run), which also gives the launch arguments at full size (int32 checks).

Attention runs as the varlen flash backends (FlashAttention-3/2) run it on a GPU: q/k/v packed
(copies), flash attention with its O(L) memory (output and log-sum-exp, as torch's flash kernel
reports on meta), output unpacked into zeros. Every key is real in these traces (256 real text
tokens, video token counts divisible by the SP degrees traced), so the packing drops nothing.

Sequence parallelism runs the engine's own `sp_forward` (Ulysses + Ring, hyv/engine/parallel) on
rank 0 of an in-process fake process group of N ranks: the collectives do nothing, the buffers
they fill are allocated as on a GPU.

Not counted: the CUDA context and library workspaces (cuBLAS, NCCL; typically 0.5-2 GB), the
caching allocator's fragmentation, and the VAE decode that follows the denoising loop (it runs
after the DiT's activations are freed). Weights: parameters of the DiT (from the model itself),
the VAE (from its preset) and the text encoders (LLaMA-3-8B as `LlamaModel` and CLIP-L's text
model, from their published architectures).

`python -m hyv.engine.meta_trace` prints the sizing tables (`--json`: the report as JSON).
docs/operations.md's sizing section is `sizing_markdown(sizing_report())`, kept identical by
tests/engine/test_meta_trace.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from hyv.kernels import _common
from hyv.kernels.aot import Launch, record_launches
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DiTConfig, dit_preset

PRESET = "hunyuan-video-13b"
TEXT_TOKENS = 256  # the LLaMA text encoder pads/truncates prompts to 256 tokens
VAE_TIME, VAE_SPACE = 4, 8  # the HunyuanVideo VAE's temporal / spatial compression
SP_DEGREES = (1, 2, 4, 8)
# Sizes in the docs' table: (height, width, frames); memory per SP degree for the ones in
# SP_SIZES, one GPU for the others.
SIZES = ((368, 640, 129), (544, 960, 61), (544, 960, 129), (720, 1280, 61), (720, 1280, 129))
SP_SIZES = ((544, 960, 129), (720, 1280, 129))
# Sustained bf16 throughput assumed for the time column (an H100 SXM at 40% of its 989 TFLOP/s
# dense peak); an assumption, not a measurement.
ASSUMED_TFLOPS = 400.0
GB = 1e9


def latent_shape(height: int, width: int, frames: int, channels: int = 16) -> tuple[int, int, int, int]:
    """(C, T, H, W) of the VAE latent of a video: causal 4x in time (frame 0 alone), 8x in space."""
    if (frames - 1) % VAE_TIME or height % VAE_SPACE or width % VAE_SPACE:
        raise ValueError(
            f"video {height}x{width}x{frames}: frames must be 4k+1 and height/width multiples of 8"
        )
    return channels, (frames - 1) // VAE_TIME + 1, height // VAE_SPACE, width // VAE_SPACE


# ---------------------------------------------------------------------------------------------
# Instruments


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages allocated inside the mode that are still alive, and their peak.

    An op's output storage is new unless it is one of its inputs' (a view, an in-place op): views
    of the weights or of older tensors are not counted again. A storage is uncounted when it is
    freed (torch preserves its Python object while it lives, so a finalizer fires exactly then).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in inputs:
            return
        size = storage.nbytes()
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def varlen_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q/k/v (B, H, L, D) as `F.scaled_dot_product_attention` takes them -> (B, H, L, D), with
    the allocations of hyv.kernels.attention's varlen path (every token real)."""
    B, H, L, D = q.shape
    idx = torch.arange(B * L, device=q.device)  # (N,) positions of the real tokens
    q_p, k_p, v_p = (t.transpose(1, 2).reshape(B * L, H, D).index_select(0, idx) for t in (q, k, v))
    # the flash kernel attends each sequence on its own: run it per (B, L) so FLOPs count L^2, not (B*L)^2
    out = torch.ops.aten._scaled_dot_product_flash_attention(
        *(t.view(B, L, H, D).transpose(1, 2) for t in (q_p, k_p, v_p))
    )[0]  # (B, H, L, D)
    packed = out.transpose(1, 2).reshape(B * L, H, D)  # (N, H, D)
    unpacked = packed.new_zeros(B * L, H, D).index_copy(0, idx, packed)
    return unpacked.view(B, L, H, D).transpose(1, 2)


class FlashAttentionOnMeta(TorchFunctionMode):
    """Routes `F.scaled_dot_product_attention` (hyv.kernels.attention's choice on a non-CUDA
    device, whose meta path is the O(L^2) math fallback) to `varlen_flash_attention`. The key
    mask is dropped: every key is real in these traces."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            return varlen_flash_attention(q, k, v)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_sp_groups(world_size: int, num_heads: int) -> Iterator[Any]:
    """SPGroups of rank 0 in an in-process fake process group of `world_size` ranks (collectives
    are no-ops), with the engine's default layout (`SPConfig.auto`)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from hyv.engine.parallel.groups import SPConfig, SPGroups

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized; the meta trace needs its own")
    config = SPConfig.auto(world_size, num_heads)
    if config.ring_degree > 1:
        raise ValueError(f"SP degree {world_size} needs ring attention ({config}); only Ulysses is traced")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield SPGroups(
            config=config,
            rank=0,
            world_size=world_size,
            ulysses_group=dist.group.WORLD if world_size > 1 else None,
            ring_group=None,
            ulysses_ranks=tuple(range(world_size)),
            ring_ranks=(0,),
        )
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# One step


@dataclass(frozen=True)
class StepTrace:
    """One denoising step (one DiT forward) on one GPU of an SP group of `sp_degree`."""

    preset: str
    height: int
    width: int
    frames: int
    latent: tuple[int, int, int, int]  # (C, T, H, W)
    video_tokens: int
    text_tokens: int
    batch: int
    sp_degree: int
    dtype: str
    output_shape: tuple[int, ...]
    flops: int  # this GPU's FLOPs for the step
    attention_flops: int
    flops_by_op: dict[str, int]
    activation_peak_bytes: int  # peak bytes of tensors created during the step (inputs included)
    fused_kernels: bool  # the Triton kernels' allocations (True) or the PyTorch references'
    launches: tuple[Launch, ...] = field(default=(), repr=False, compare=False)

    @property
    def attention_share(self) -> float:
        return self.attention_flops / self.flops

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "launches"}
        data["latent"] = list(self.latent)
        data["output_shape"] = list(self.output_shape)
        data["attention_share"] = round(self.attention_share, 4)
        return data


def build_meta_dit(preset: str = PRESET, dtype: torch.dtype = torch.bfloat16) -> HunyuanVideoDiT:
    with torch.device("meta"):
        model = HunyuanVideoDiT(dit_preset(preset))
    return model.to(dtype).eval().requires_grad_(False)


def trace_step(
    height: int,
    width: int,
    frames: int,
    sp_degree: int = 1,
    batch: int = 1,
    text_tokens: int = TEXT_TOKENS,
    preset: str = PRESET,
    dtype: torch.dtype = torch.bfloat16,
    model: HunyuanVideoDiT | None = None,
    fused: bool | None = None,
) -> StepTrace:
    """Trace one DiT forward at this video size; see the module docstring for what is counted.

    fused: the Triton kernels' path (their CUDA allocations; launches recorded), the default
    whenever triton is installed, as on a GPU; False: the PyTorch references' allocations."""
    from hyv.engine.parallel.dit import sp_forward
    from hyv.kernels import rope

    model = build_meta_dit(preset, dtype) if model is None else model
    c: DiTConfig = model.config
    latent = latent_shape(height, width, frames, c.in_channels)
    video_tokens = math.prod(n // p for n, p in zip(latent[1:], c.patch_size, strict=True))
    meta = torch.device("meta")
    fused = _common.triton_available() if fused is None else fused
    if fused and not _common.triton_available():
        raise ValueError("fused=True needs triton installed")
    rope._rope_tables_cached.cache_clear()  # the tables are built (and counted) inside the step

    flops = FlopCounterMode(display=False)
    live = LiveBytes()
    was_enabled = _common.fused_enabled()
    with contextlib.ExitStack() as stack:
        _common.set_fused_enabled(fused)
        stack.callback(_common.set_fused_enabled, was_enabled)
        stack.enter_context(torch.inference_mode())
        log = stack.enter_context(record_launches()) if fused else None
        stack.enter_context(FlashAttentionOnMeta())
        stack.enter_context(flops)
        stack.enter_context(live)
        x = torch.empty(batch, *latent, dtype=dtype, device=meta)
        t = torch.empty(batch, dtype=dtype, device=meta)
        text = torch.empty(batch, text_tokens, c.text_dim, dtype=dtype, device=meta)
        mask = torch.ones(batch, text_tokens, dtype=torch.bool, device=meta)
        pooled = torch.empty(batch, c.pooled_dim, dtype=dtype, device=meta)
        guidance = torch.empty(batch, dtype=dtype, device=meta) if c.guidance_embed else None
        if sp_degree == 1:
            out = model(x, t, text, mask, pooled, guidance)
        else:
            with fake_sp_groups(sp_degree, c.num_heads) as groups:
                out = sp_forward(model, groups, x, t, text, mask, pooled, guidance)
        output_shape = tuple(out.shape)
        del out, x, t, text, mask, pooled, guidance
    rope._rope_tables_cached.cache_clear()

    by_op = {str(op).removeprefix("aten."): int(n) for op, n in flops.get_flop_counts()["Global"].items()}
    return StepTrace(
        preset=preset,
        height=height,
        width=width,
        frames=frames,
        latent=latent,
        video_tokens=video_tokens,
        text_tokens=text_tokens,
        batch=batch,
        sp_degree=sp_degree,
        dtype=str(dtype).removeprefix("torch."),
        output_shape=output_shape,
        flops=int(flops.get_total_flops()),
        attention_flops=sum(n for op, n in by_op.items() if "attention" in op),
        flops_by_op=dict(sorted(by_op.items())),
        activation_peak_bytes=live.peak,
        fused_kernels=fused,
        launches=tuple(log.launches) if log is not None else (),
    )


# ---------------------------------------------------------------------------------------------
# Weights


def llama_params(
    vocab: int = 128256, hidden: int = 4096, layers: int = 32, heads: int = 32, kv_heads: int = 8,
    intermediate: int = 14336,
) -> int:  # fmt: skip
    """Parameters of a `LlamaModel` (no LM head); defaults: LLaMA-3-8B, HunyuanVideo's text
    encoder (llava-llama-3-8b's language model)."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o; k, v (GQA)
    mlp = 3 * hidden * intermediate  # gate, up, down
    return vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden  # + 2 norms per layer, final


def clip_text_params(
    vocab: int = 49408, hidden: int = 768, layers: int = 12, intermediate: int = 3072, positions: int = 77
) -> int:
    """Parameters of a `CLIPTextModel`; defaults: CLIP ViT-L/14's text tower."""
    attention = 4 * (hidden * hidden + hidden)  # q, k, v, out with biases
    mlp = 2 * hidden * intermediate + intermediate + hidden
    return vocab * hidden + positions * hidden + layers * (attention + mlp + 4 * hidden) + 2 * hidden


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the weights in bf16 (2 bytes per parameter) unless named otherwise."""

    dit_params: int
    dit: int
    dit_fp8: int  # block linear weights in float8_e4m3 + one fp32 scale per output row
    dit_outside_blocks: int  # embedders, token refiner, final layer
    largest_block: int
    vae_params: int
    vae: int
    text_encoder_params: int
    text_encoders: int


def weight_bytes(model: HunyuanVideoDiT) -> WeightBytes:
    from hyv.models.vae import CausalVAE3D
    from hyv.models.vae_config import vae_preset

    def params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    blocks: list[nn.Module] = [*model.double_blocks, *model.single_blocks]
    total = params(model)
    linear_weights = linear_rows = 0
    for block in blocks:
        for layer in block.modules():
            if isinstance(layer, nn.Linear):
                linear_weights += layer.weight.numel()
                linear_rows += layer.out_features
    with torch.device("meta"):
        vae = params(CausalVAE3D(vae_preset("hunyuan-video")))
    text = llama_params() + clip_text_params()
    return WeightBytes(
        dit_params=total,
        dit=2 * total,
        dit_fp8=2 * (total - linear_weights) + linear_weights + 4 * linear_rows,
        dit_outside_blocks=2 * (total - sum(params(b) for b in blocks)),
        largest_block=2 * max(params(b) for b in blocks),
        vae_params=vae,
        vae=2 * vae,
        text_encoder_params=text,
        text_encoders=2 * text,
    )


# What stays on the GPU during the denoising loop under each memory option. Model offload
# (`hyv generate --offload`): the text encoder and the VAE are on the GPU only while they run, so
# the DiT is alone there while it denoises; fp8 weights (hyv/models/fp8.py) and block offload
# (`--offload-blocks`) shrink the DiT itself, on top of model offload.
MEMORY_OPTIONS: dict[str, str] = {
    "none": "everything on the GPU",
    "text_encoder_offload": "text encoder off the GPU",
    "model_offload": "model offload (DiT alone)",
    "fp8_weights": "model offload + fp8 block weights",
    "block_offload": "model offload + block offload",
}


# The settings of each option, for the "which combination fits" table.
OPTION_SETTINGS: dict[str, str] = {
    "none": "the defaults",
    "text_encoder_offload": "`HYV_TEXT_ENCODER_PLACEMENT=cpu`",
    "model_offload": "`HYV_MODEL_OFFLOAD=true`",
    "fp8_weights": "`HYV_MODEL_OFFLOAD=true` + `HYV_DIT_DTYPE=fp8`",
    "block_offload": "`HYV_MODEL_OFFLOAD=true` + `HYV_OFFLOAD_BLOCKS=true`",
}
GPU_MEMORY_GB = (80, 48, 40, 24)  # the cards a sizing question is usually about
CONTEXT_HEADROOM_BYTES = 2 * 10**9  # CUDA context, cuBLAS/NCCL workspaces, fragmentation: not counted


def first_fit(report: SizingReport, trace: StepTrace, gpu_gb: int) -> str | None:
    """The first memory option (fastest first: each one after the other moves more weights per
    step or job) whose denoising memory plus CONTEXT_HEADROOM_BYTES fits a `gpu_gb` card."""
    for option in MEMORY_OPTIONS:
        if report.gpu_bytes(trace, option) + CONTEXT_HEADROOM_BYTES <= gpu_gb * 10**9:
            return option
    return None


def resident_weights(w: WeightBytes, option: str) -> int:
    """Weight bytes on the GPU while the DiT runs. Block offload: the blocks visit the GPU one at
    a time (hyv/engine/offload.py), so the largest block plus everything outside the blocks."""
    if option == "none":
        return w.dit + w.text_encoders + w.vae
    if option == "text_encoder_offload":
        return w.dit + w.vae
    if option == "model_offload":
        return w.dit
    if option == "fp8_weights":
        return w.dit_fp8
    if option == "block_offload":
        return w.dit_outside_blocks + w.largest_block
    raise ValueError(f"unknown memory option {option!r}; choose one of {sorted(MEMORY_OPTIONS)}")


# ---------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class SizingReport:
    preset: str
    weights: WeightBytes
    traces: tuple[StepTrace, ...]

    def trace(self, height: int, width: int, frames: int, sp_degree: int = 1) -> StepTrace:
        for t in self.traces:
            if (t.height, t.width, t.frames, t.sp_degree) == (height, width, frames, sp_degree):
                return t
        raise KeyError(f"no trace of {height}x{width}x{frames} at SP degree {sp_degree}")

    def gpu_bytes(self, trace: StepTrace, option: str) -> int:
        return resident_weights(self.weights, option) + trace.activation_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "weights": dataclasses.asdict(self.weights),
            "traces": [
                {
                    **t.to_dict(),
                    "gpu_bytes": {option: self.gpu_bytes(t, option) for option in MEMORY_OPTIONS},
                }
                for t in self.traces
            ],
        }


def sizing_report(
    sizes: Sequence[tuple[int, int, int]] = SIZES,
    sp_sizes: Sequence[tuple[int, int, int]] = SP_SIZES,
    sp_degrees: Sequence[int] = SP_DEGREES,
    preset: str = PRESET,
) -> SizingReport:
    """Traces of every size on one GPU, and of `sp_sizes` at every SP degree."""
    model = build_meta_dit(preset)
    cases = [(*size, 1) for size in sizes]
    cases += [(*size, n) for size in sp_sizes for n in sp_degrees if (*size, n) not in cases]
    traces = tuple(trace_step(h, w, f, sp_degree=n, preset=preset, model=model) for h, w, f, n in cases)
    return SizingReport(preset, weight_bytes(model), traces)


def _gb(n: int) -> str:
    return f"{n / GB:.1f}"


def sizing_markdown(report: SizingReport) -> str:
    """The tables of docs/operations.md's sizing section."""
    w = report.weights
    one_gpu = [t for t in report.traces if t.sp_degree == 1]
    lines = [
        "| video (H x W x frames) | latent (C x T x H x W) | video tokens | TFLOPs / step | attention share "
        f"| s / step at {ASSUMED_TFLOPS:.0f} TFLOP/s (ASSUMED) | 50 steps (ASSUMED) | activations GB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in one_gpu:
        seconds = t.flops / (ASSUMED_TFLOPS * 1e12)
        lines.append(
            f"| {t.height} x {t.width} x {t.frames} | {' x '.join(map(str, t.latent))} | {t.video_tokens:,} "
            f"| {t.flops / 1e12:,.0f} | {100 * t.attention_share:.1f}% | {seconds:.1f} "
            f"| {50 * seconds / 60:.1f} min | {_gb(t.activation_peak_bytes)} |"
        )
    lines += [
        "",
        "GPU memory per GPU during denoising (GB = 1e9 bytes): weights resident under each option + "
        "the step's activation peak.",
        "",
        "| video | SP degree | TFLOPs / step / GPU | activations | "
        + " | ".join(MEMORY_OPTIONS.values())
        + " |",
        "| --- | ---: | ---: | ---: |" + " ---: |" * len(MEMORY_OPTIONS),
    ]
    for t in sorted(report.traces, key=lambda t: (-t.video_tokens, t.frames, t.sp_degree)):
        if not any(u.sp_degree > 1 and (u.height, u.width, u.frames) == (t.height, t.width, t.frames)
                   for u in report.traces):  # fmt: skip
            continue
        cells = [_gb(report.gpu_bytes(t, option)) for option in MEMORY_OPTIONS]
        lines.append(
            f"| {t.height} x {t.width} x {t.frames} | {t.sp_degree} | {t.flops / 1e12:,.0f} "
            f"| {_gb(t.activation_peak_bytes)} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Which combination fits which card: the first option, fastest first, whose denoising memory "
        f"above plus {CONTEXT_HEADROOM_BYTES / GB:.0f} GB of headroom (CUDA context, workspaces) fits.",
        "",
        "| video | SP degree | " + " | ".join(f"{gb} GB" for gb in GPU_MEMORY_GB) + " |",
        "| --- | ---: |" + " --- |" * len(GPU_MEMORY_GB),
    ]
    for t in sorted(report.traces, key=lambda t: (-t.video_tokens, t.frames, t.sp_degree)):
        if not any(u.sp_degree > 1 and (u.height, u.width, u.frames) == (t.height, t.width, t.frames)
                   for u in report.traces):  # fmt: skip
            continue
        fits = [first_fit(report, t, gb) for gb in GPU_MEMORY_GB]
        cells = [OPTION_SETTINGS[option] if option else "does not fit" for option in fits]
        lines.append(f"| {t.height} x {t.width} x {t.frames} | {t.sp_degree} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Weights (bf16): DiT {_gb(w.dit)} GB ({w.dit_params / 1e9:.2f}B parameters; {_gb(w.dit_fp8)} GB "
        f"with fp8 block linears; outside the blocks {_gb(w.dit_outside_blocks)} GB, largest block "
        f"{_gb(w.largest_block)} GB), text encoders {_gb(w.text_encoders)} GB "
        f"({w.text_encoder_params / 1e9:.2f}B), VAE {_gb(w.vae)} GB ({w.vae_params / 1e6:.0f}M).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hyv.engine.meta_trace",
        description="FLOPs and memory of the 13B DiT per denoising step, traced on the meta device.",
    )
    parser.add_argument("--json", action="store_true", help="the full report as JSON")
    args = parser.parse_args(argv)
    report = sizing_report()
    print(json.dumps(report.to_dict(), indent=1) if args.json else sizing_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
