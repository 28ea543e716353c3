"""CPU model benchmarks: ours vs diffusers (same weights, same threads, one run) and the memory
of tiled vs untiled VAE decode. Writes benchmarks/results/models_cpu.json and the matching section
of docs/benchmarks.md.

    python -m benchmarks.models_cpu [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import machine_description, update_benchmarks_doc

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/models_cpu.json")

DIT_BENCH_CONFIG = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=6,
    attention_head_dim=64,
    num_layers=2,
    num_single_layers=4,
    num_refiner_layers=2,
    text_embed_dim=256,
    pooled_projection_dim=256,
    rope_axes_dim=(16, 24, 24),
    guidance_embeds=True,
)
VAE_BENCH_CONFIG = dict(
    block_out_channels=(32, 64, 128, 128),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=16,
)


def time_pair(ours: Callable[[], Any], baseline: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall times (s) of two calls, measured alternately so that drift in the machine's
    load affects both alike."""
    ours(), baseline()  # warm-up
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((ours, samples[0]), (baseline, samples[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


@torch.no_grad()
def bench_dit(repeats: int) -> dict[str, Any]:
    from diffusers import HunyuanVideoTransformer3DModel

    from hyv.models import load_dit

    torch.manual_seed(0)
    reference = HunyuanVideoTransformer3DModel(**DIT_BENCH_CONFIG).eval()  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = load_dit(tmp).eval()
    batch, frames, height, width, text_len = 1, 5, 32, 32, 32
    latents = torch.randn(batch, 16, frames, height, width)  # (B, C, T, H, W)
    timestep = torch.tensor([500.0])
    states = torch.randn(batch, text_len, 256)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[:, 20:] = 0
    pooled = torch.randn(batch, 256)
    guidance = torch.tensor([6000.0])
    out_ours = ours(latents, timestep, states, mask, pooled, guidance)
    out_ref = reference(latents, timestep, states, mask, pooled, guidance, return_dict=False)[0]
    max_diff = (out_ours - out_ref).abs().max().item()
    t_ours, t_ref = time_pair(
        lambda: ours(latents, timestep, states, mask, pooled, guidance),
        lambda: reference(latents, timestep, states, mask, pooled, guidance, return_dict=False),
        repeats,
    )
    tokens = frames * (height // 2) * (width // 2)
    return {
        "config": {**DIT_BENCH_CONFIG, "latent": [batch, 16, frames, height, width], "video_tokens": tokens},
        "params": sum(p.numel() for p in ours.parameters()),
        "ours_s": t_ours,
        "diffusers_s": t_ref,
        "speedup_vs_diffusers": t_ref / t_ours,
        "max_abs_diff": max_diff,
    }


@torch.no_grad()
def bench_vae_decode(repeats: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLHunyuanVideo

    from hyv.models import load_vae

    torch.manual_seed(0)
    reference = AutoencoderKLHunyuanVideo(**VAE_BENCH_CONFIG).eval()  # type: ignore[arg-type]
    reference.use_framewise_decoding = False  # diffusers tiles time by default; compare untiled
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        ours = load_vae(tmp).eval()
    latents = torch.randn(1, 16, 5, 8, 8)  # 17 frames of 64x64 px
    out_ours = ours.decode(latents, tiled=False)
    out_ref = reference.decode(latents).sample
    max_diff = (out_ours - out_ref).abs().max().item()
    t_ours, t_ref = time_pair(
        lambda: ours.decode(latents, tiled=False), lambda: reference.decode(latents), repeats
    )
    return {
        "config": {**VAE_BENCH_CONFIG, "latent": [1, 16, 5, 8, 8], "frames": 17, "size": "64x64"},
        "ours_s": t_ours,
        "diffusers_s": t_ref,
        "speedup_vs_diffusers": t_ref / t_ours,
        "max_abs_diff": max_diff,
    }


MEMORY_MODES = {
    "streamed": "tiled, streamed (`iter_decode`, each chunk dropped after use, as the engine does)",
    "tiled": "tiled, whole video returned (`decode(tiled=True)`: includes the output itself)",
    "untiled": "untiled (`decode(tiled=False)`)",
}


def _decode_peak_rss(frames: int, mode: str, size: int, queue: Any) -> None:
    """Runs in a fresh process: peak RSS during one decode minus the RSS before it (model and
    latents loaded), in MiB. Linux only (/proc)."""
    torch.set_num_threads(1)
    from hyv.models import CausalVAE3D, VAETiling, vae_preset

    torch.manual_seed(0)
    vae = CausalVAE3D(vae_preset("tiny")).eval()
    # Temporal tiles of 16 frames (4 latent) and spatial tiles of half the frame, overlap 0.25,
    # so every frame count measured here is longer than one tile.
    tiling = VAETiling(sample_size=size // 2, sample_frames=16, overlap=0.25)
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, size // 8, size // 8)
    with torch.no_grad():  # start the thread pool and allocator outside the measurement
        vae.decode(latents[:, :, :1, :2, :2], tiled=False)
    baseline = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    with torch.no_grad():
        if mode == "streamed":
            for _chunk in vae.iter_decode(latents, tiling):
                pass
        else:
            vae.decode(latents, tiled=mode == "tiled", tiling=tiling)
    queue.put((_proc_status_kib("VmHWM") - baseline) / 1024.0)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def bench_vae_memory(frame_counts: list[int], size: int) -> dict[str, Any]:
    # glibc raises its mmap threshold after large frees, after which freed tensors stay in the heap
    # and RSS stops following live memory; a fixed threshold keeps RSS honest in the children.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    ctx = mp.get_context("spawn")
    curves: dict[str, list[float]] = {mode: [] for mode in MEMORY_MODES}
    for mode in MEMORY_MODES:
        for frames in frame_counts:
            queue = ctx.Queue()
            proc = ctx.Process(target=_decode_peak_rss, args=(frames, mode, size, queue))
            proc.start()
            peak = queue.get(timeout=900)
            proc.join()
            curves[mode].append(peak)
            logger.info("decode %d frames %dpx %s: +%.1f MiB", frames, size, mode, peak)
    streamed = curves["streamed"]
    spread = (max(streamed) - min(streamed)) / max(streamed)
    return {"frames": frame_counts, "size": size, "peak_mib": curves, "streamed_spread": spread}


def render(results: dict[str, Any]) -> str:
    dit, vae, mem = results["dit_forward"], results["vae_decode"], results["vae_memory"]
    lines = [
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} threads.",
        "",
        "| benchmark | ours (s) | diffusers (s) | speedup (diffusers / ours) | max abs diff |",
        "|---|---|---|---|---|",
        f"| DiT forward ({dit['params'] / 1e6:.1f}M params, {dit['config']['video_tokens']} video tokens) "
        f"| {dit['ours_s']:.4f} | {dit['diffusers_s']:.4f} | {dit['speedup_vs_diffusers']:.2f}x "
        f"| {dit['max_abs_diff']:.1e} |",
        f"| VAE decode (17 frames 64x64, blocks {tuple(VAE_BENCH_CONFIG['block_out_channels'])}) "
        f"| {vae['ours_s']:.4f} | {vae['diffusers_s']:.4f} | {vae['speedup_vs_diffusers']:.2f}x "
        f"| {vae['max_abs_diff']:.1e} |",
        "",
        f"Peak RSS growth of one VAE decode (tiny VAE, {mem['size']}x{mem['size']} px, temporal tile "
        "16 frames, spatial tile half the frame, overlap 0.25), one fresh process per point:",
        "",
        "| frames | " + " | ".join(str(f) for f in mem["frames"]) + " |",
        "|---|" + "---|" * len(mem["frames"]),
        *(
            f"| {label} (MiB) | " + " | ".join(f"{v:.1f}" for v in mem["peak_mib"][mode]) + " |"
            for mode, label in MEMORY_MODES.items()
        ),
        "",
        f"Streamed tiled decode spread (max - min) / max: {mem['streamed_spread'] * 100:.1f}%. "
        "RSS is measured with a fixed glibc mmap threshold so that freed tensors leave the RSS.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and frames (smoke run)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 9
    frames = [17, 33] if args.quick else [17, 33, 65, 129]
    results = {
        "machine": machine_description(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "dit_forward": bench_dit(repeats),
        "vae_decode": bench_vae_decode(repeats),
        "vae_memory": bench_vae_memory(frames, size=128),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    update_benchmarks_doc("Models on CPU (issue 2)", render(results))
    logger.info("wrote %s and docs/benchmarks.md", RESULTS)


if __name__ == "__main__":
    main()
