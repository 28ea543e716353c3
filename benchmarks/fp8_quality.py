"""FP8 DiT weights (hyv.models.fp8): how far the decoded video moves, and the weight memory saved.

For the tiny test model (random weights) and the bundled hyv-small, the same request (seed fixed)
is generated with the whole pipeline in fp32 and in bf16, then with the DiT's block linears in
FP8 through each of the two paths of `FP8Linear` (weights dequantized per layer; fp8 activations
and `torch._scaled_mm`, which torch also runs on the CPU). The decoded frames (uint8, before the
H.264 encoder, whose own loss would blur the comparison) are compared with the bf16 and fp32
videos: max abs pixel difference and PSNR. Weight bytes are counted for both models and for the
13B preset (on the meta device).

    python -m benchmarks.fp8_quality [--quick]     # --quick: the tiny model only

Writes benchmarks/results/fp8_quality.json; docs/models.md ("FP8 weights") quotes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import machine_description
from hyv.engine.bundle import DEFAULT_BUNDLE_DIR, ModelBundle, init_random_bundle, load_bundle
from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import video_to_uint8
from hyv.models import HunyuanVideoDiT, dit_preset
from hyv.models.fp8 import FP8Linear, quantize_dit_, set_scaled_mm_, weight_bytes

logger = logging.getLogger(__name__)
RESULTS = Path("benchmarks/results/fp8_quality.json")
README_PROMPT = "a red circle moving right on a black background"
TINY_REQUEST = GenerationRequest(prompt=README_PROMPT, width=32, height=48, num_frames=9, steps=4, seed=0)
SMALL_REQUEST = GenerationRequest(prompt=README_PROMPT, width=64, height=64, num_frames=17, seed=0)

# name -> (pipeline dtype, DiT block linears in FP8, FP8 path: True = torch._scaled_mm)
VARIANTS: dict[str, tuple[torch.dtype, bool, bool]] = {
    "fp32": (torch.float32, False, False),
    "bf16": (torch.bfloat16, False, False),
    "fp8_dequant_bf16": (torch.bfloat16, True, False),
    "fp8_scaled_mm_bf16": (torch.bfloat16, True, True),
    "fp8_dequant_fp32": (torch.float32, True, False),
    "fp8_scaled_mm_fp32": (torch.float32, True, True),
}


def tiny_bundle(seed: int = 1) -> ModelBundle:
    """The tests' tiny bundle with every DiT weight drawn N(0, 0.1) (no zero gates: every layer
    shapes the video), as tests/engine/test_pipeline.py builds it."""
    bundle = init_random_bundle("tiny", seed=0)
    torch.manual_seed(seed)
    bundle.dit = HunyuanVideoDiT(dit_preset("tiny"))
    for param in bundle.dit.parameters():
        param.data.normal_(0.0, 0.1)
    return bundle


def video_error(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max abs pixel difference and PSNR (dB, peak 255) of two uint8 videos of one shape."""
    if reference.shape != other.shape:
        raise ValueError(f"videos differ in shape: {reference.shape} vs {other.shape}")
    diff = reference.astype(np.float64) - other.astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    return {"max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()), "psnr_db": psnr}


def decoded_video(pipeline: VideoPipeline, request: GenerationRequest) -> np.ndarray:
    """(T, H, W, 3) uint8: the VAE's frames as the MP4 encoder receives them."""
    plan = pipeline.plan(request)
    with torch.inference_mode():
        chunks = [video_to_uint8(chunk[0]) for chunk in pipeline._frames(plan, {}, None, None)]
    return np.concatenate(chunks, axis=0)


def make_pipeline(bundle: ModelBundle, variant: str) -> VideoPipeline:
    """A pipeline on a private copy of `bundle` in the variant's precision (CPU)."""
    dtype, fp8, scaled_mm = VARIANTS[variant]
    options = PipelineOptions(device="cpu", dtype=dtype, dit_dtype="fp8" if fp8 else None)
    pipeline = VideoPipeline(copy.deepcopy(bundle), options)
    if fp8:
        set_scaled_mm_(pipeline.dit, scaled_mm)
    return pipeline


def dit_weight_bytes(dit: HunyuanVideoDiT) -> dict[str, int]:
    blocks = [*dit.double_blocks, *dit.single_blocks]
    return {"dit": weight_bytes(dit), "blocks": sum(weight_bytes(b) for b in blocks)}


def weight_memory(dit: HunyuanVideoDiT) -> dict[str, Any]:
    """Weight bytes of `dit` stored in bf16 and with its block linears in FP8 (bias bf16, scale fp32)."""
    bf16 = copy.deepcopy(dit).to(torch.bfloat16)
    fp8 = copy.deepcopy(bf16)
    layers = quantize_dit_(fp8)
    before, after = dit_weight_bytes(bf16), dit_weight_bytes(fp8)
    return {
        "fp8_layers": layers,
        "bf16_bytes": before,
        "fp8_bytes": after,
        "blocks_ratio": round(after["blocks"] / before["blocks"], 4),
        "dit_ratio": round(after["dit"] / before["dit"], 4),
    }


def measure_model(name: str, bundle: ModelBundle, request: GenerationRequest) -> dict[str, Any]:
    videos: dict[str, np.ndarray] = {}
    for variant in VARIANTS:
        pipeline = make_pipeline(bundle, variant)
        layers = sum(isinstance(m, FP8Linear) for m in pipeline.dit.modules())
        videos[variant] = decoded_video(pipeline, request)
        logger.info("%s %s: %d FP8 layers", name, variant, layers)
        del pipeline
    errors = {
        variant: {
            "vs_bf16": video_error(videos["bf16"], video),
            "vs_fp32": video_error(videos["fp32"], video),
        }
        for variant, video in videos.items()
    }
    return {
        "request": request.model_dump(exclude={"image"}),
        "video_shape": list(videos["fp32"].shape),
        "errors": errors,
        "weights": weight_memory(bundle.dit),
    }


def measure(quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "machine": f"{machine_description()}; torch {torch.__version__}",
        "models": {"tiny": measure_model("tiny", tiny_bundle(), TINY_REQUEST)},
    }
    if not quick:
        small = load_bundle(DEFAULT_BUNDLE_DIR)
        results["models"]["hyv-small"] = measure_model("hyv-small", small, SMALL_REQUEST)
    with torch.device("meta"):
        big = HunyuanVideoDiT(dit_preset("hunyuan-video-13b"))
    results["hunyuan-video-13b_weights"] = weight_memory(big)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results = measure(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
