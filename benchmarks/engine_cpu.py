"""Engine benchmark on CPU: our pipeline vs diffusers' HunyuanVideoPipeline with the same weights
(DiT, VAE, LLaMA + CLIP text encoders), the same size and steps, in one run; and the time to the
first streamed MP4 byte vs the total. Writes benchmarks/results/engine_cpu.json and its section of
docs/benchmarks.md.

    python -m benchmarks.engine_cpu [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import machine_description, update_benchmarks_doc

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/engine_cpu.json")
PROMPT = "a red circle moving right on a black background"


class StageClock:
    """Wall time spent inside a module's forward (or a method), summed over calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def build_pair(root: Path, steps: int) -> tuple[Any, Any]:
    """Our VideoPipeline and diffusers' HunyuanVideoPipeline over the same weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    from hyv.engine.bundle import BundleSpec, ModelBundle
    from hyv.engine.limits import ModelLimits
    from hyv.engine.pipeline import PipelineOptions, VideoPipeline
    from hyv.models import load_dit, load_text_encoder, load_vae
    from tests.models.hf_fixtures import save_tiny_hunyuan_text_stack

    stack = save_tiny_hunyuan_text_stack(root / "text")
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=6,
        attention_head_dim=64,
        num_layers=4,
        num_single_layers=8,
        text_embed_dim=stack.llama.config.hidden_size,
        pooled_projection_dim=stack.clip.config.hidden_size,
        rope_axes_dim=(16, 24, 24),
        guidance_embeds=True,
    ).eval()
    vae = AutoencoderKLHunyuanVideo(
        block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=8
    )
    vae.use_framewise_decoding = False  # one untiled pass, as ours for a video within one tile
    transformer.save_pretrained(root / "dit")
    vae.save_pretrained(root / "vae")
    limits = ModelLimits(steps=steps, flow_shift=7.0, guidance=6.0)
    spec = BundleSpec("bench", "custom", "custom", None, limits)
    bundle = ModelBundle(
        spec, load_dit(root / "dit"), load_vae(root / "vae"), load_text_encoder(root / "text")
    )
    ours = VideoPipeline(bundle, PipelineOptions())
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    reference = HunyuanVideoPipeline(
        text_encoder=stack.llama,
        tokenizer=stack.llama_tokenizer,
        transformer=transformer,
        vae=vae.eval(),
        scheduler=scheduler,
        text_encoder_2=stack.clip,
        tokenizer_2=stack.clip_tokenizer,
    )
    reference.set_progress_bar_config(disable=True)
    return ours, reference


def time_diffusers(reference: Any, width: int, height: int, frames: int, steps: int) -> dict[str, float]:
    clocks = {"text_encode": StageClock(), "denoise": StageClock(), "decode": StageClock()}
    encode, forward, decode = reference.encode_prompt, reference.transformer.forward, reference.vae.decode
    reference.encode_prompt = clocks["text_encode"].wrap(encode)
    reference.transformer.forward = clocks["denoise"].wrap(forward)
    reference.vae.decode = clocks["decode"].wrap(decode)
    try:
        start = time.perf_counter()
        reference(
            prompt=PROMPT,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        total = time.perf_counter() - start
    finally:
        reference.encode_prompt, reference.transformer.forward, reference.vae.decode = encode, forward, decode
    # diffusers returns frames, not an MP4: its total has no encode stage.
    return {**{k: c.seconds for k, c in clocks.items()}, "total": total}


def time_ours(ours: Any, width: int, height: int, frames: int, steps: int) -> dict[str, float]:
    from hyv.engine.request import GenerationRequest

    request = GenerationRequest(
        prompt=PROMPT, width=width, height=height, num_frames=frames, steps=steps, seed=0
    )
    start = time.perf_counter()
    result = ours.generate(request)
    return {**result.timings, "total": time.perf_counter() - start}


def time_stream(ours: Any, width: int, height: int, frames: int, steps: int, tile_frames: int | None) -> dict:
    from dataclasses import replace

    from hyv.engine.request import GenerationRequest
    from hyv.models import VAETiling

    tiling = VAETiling(sample_size=256, sample_frames=tile_frames, overlap=0.25) if tile_frames else None
    ours.options = replace(ours.options, vae_tiling=tiling)
    request = GenerationRequest(
        prompt=PROMPT, width=width, height=height, num_frames=frames, steps=steps, seed=0
    )
    summary: dict[str, Any] = {}
    size = sum(len(chunk) for chunk in ours.stream(request, result=summary))
    ours.options = replace(ours.options, vae_tiling=None)
    keys = ("first_byte_s", "first_fragment_s", "total_s")
    return {"tile_frames": tile_frames, "bytes": size, **{key: summary[key] for key in keys}}


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def render(results: dict[str, Any]) -> str:
    ours, ref = results["ours"], results["diffusers"]
    size = results["size"]
    lines = [
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} threads. "
        f"{size['width']}x{size['height']}, {size['frames']} frames, {size['steps']} steps, median of "
        f"{results['repeats']} runs; DiT {results['dit_params'] / 1e6:.1f}M parameters; same weights in "
        "both.",
        "",
        "| stage | ours (s) | diffusers (s) | diffusers / ours |",
        "|---|---|---|---|",
    ]
    for stage in ("text_encode", "denoise", "decode"):
        lines.append(f"| {stage} | {ours[stage]:.3f} | {ref[stage]:.3f} | {ref[stage] / ours[stage]:.2f}x |")
    lines.append(f"| encode (H.264 MP4) | {ours['encode']:.3f} | (returns frames) | |")
    lines.append(
        f"| **total** | {ours['total']:.3f} | {ref['total']:.3f} | {ref['total'] / ours['total']:.2f}x |"
    )
    lines += [
        "",
        "Streaming (fragmented MP4): the first byte is the init segment, sent before any model work; "
        "the first fragment carries the first playable frames.",
        "",
        "| VAE time tile | first byte (s) | first fragment (s) | total (s) |",
        "|---|---|---|---|",
    ]
    for row in results["stream"]:
        tile = f"{row['tile_frames']} frames" if row["tile_frames"] else "model default (64 frames)"
        lines.append(
            f"| {tile} | {row['first_byte_s']:.3f} | {row['first_fragment_s']:.3f} | {row['total_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run, fewer steps (smoke test)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    width, height, frames = 128, 128, 33
    steps, repeats = (4, 1) if args.quick else (12, 3)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ours, reference = build_pair(Path(tmp), steps)
        time_ours(ours, width, height, frames, 1)  # warm up both
        time_diffusers(reference, width, height, frames, 1)
        ours_runs, ref_runs = [], []
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            ours_runs.append(time_ours(ours, width, height, frames, steps))
            ref_runs.append(time_diffusers(reference, width, height, frames, steps))
        stream = [time_stream(ours, width, height, frames, steps, tile) for tile in (None, 16)]
        results = {
            "machine": machine_description(),
            "torch": torch.__version__,
            "threads": args.threads,
            "size": {"width": width, "height": height, "frames": frames, "steps": steps},
            "repeats": repeats,
            "dit_params": sum(p.numel() for p in ours.dit.parameters()),
            "ours": median_stages(ours_runs),
            "diffusers": median_stages(ref_runs),
            "stream": stream,
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    update_benchmarks_doc("Engine on CPU (issue 4)", render(results))
    logger.info("wrote %s and docs/benchmarks.md", RESULTS)


if __name__ == "__main__":
    main()
