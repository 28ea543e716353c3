"""Loading the served model in a worker's pool process."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from hyv.service.job_memory import limit_job_memory
from hyv.service.settings import Settings

logger = logging.getLogger(__name__)

LOAD_RETRY_S = 60.0  # a worker whose model failed to load tries again at most this often


def pipeline_options(settings: Settings, rank: int = 0) -> Any:
    """The PipelineOptions the settings ask for, on rank `rank`'s device (cuda:rank in a worker group;
    a CPU group shares the cores between its ranks)."""
    import torch

    from hyv.engine.pipeline import PipelineOptions, default_device_and_dtype
    from hyv.models.checkpoint_io import parse_dtype

    device, dtype = default_device_and_dtype()
    device = settings.device or device
    if not device.startswith("cuda"):
        dtype = torch.float32  # bf16 is the default on GPUs only
    if settings.sp_degree > 1:
        if device.startswith("cuda"):
            device = f"cuda:{rank}"
        else:  # N processes share the cores: one thread pool each would oversubscribe them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.sp_degree))
    return PipelineOptions(
        device=device,
        dtype=parse_dtype(settings.dtype) or dtype,
        dit_dtype=settings.dit_dtype,
        default_cache=settings.default_cache,
        **memory_options(settings),
    )


def memory_options(settings: Settings) -> dict[str, Any]:
    """The PipelineOptions fields of the settings' memory options."""
    from hyv.engine.memory_options import VAETileSizes

    tiles = VAETileSizes(settings.vae_tile_size, settings.vae_tile_frames, settings.vae_tile_overlap)
    return {
        "text_encoder": settings.text_encoder_placement,
        "model_offload": settings.model_offload,
        "offload_blocks": settings.offload_blocks,
        "compile_blocks": settings.compile_dit,
        "attention_backend": settings.attention_backend,
        "vae_tiling": None if tiles.is_default() else tiles,
    }


def load_pipeline(settings: Settings, rank: int = 0, warm_up: bool = True) -> Any:
    """The settings' model on its device (a GPU if there is one), with the job memory limit set.

    With compile_dit, a lone worker (sp_degree 1) also warms the pipeline up (`warm_up`), so that the
    compilation happens now and not in the first job. A worker group's ranks warm up after wrapping
    their DiT for the group (the warm-up runs its collectives), by calling `pipeline.warm_up()`."""
    from hyv.engine.lora import LoraLibrary
    from hyv.engine.pipeline import VideoPipeline

    start = time.perf_counter()
    options = pipeline_options(settings, rank)
    pipeline = VideoPipeline.from_dir(settings.weights, options, settings.text_encoder)
    pipeline.loras = LoraLibrary(settings.lora_folder, settings.lora_cache_size)
    # The weights a job brings onto the GPU (offloaded components) count as the model's, not the job's.
    limit_job_memory(settings, pipeline.device, pipeline.visiting_weight_bytes)
    load_s = time.perf_counter() - start
    warm_up_s = pipeline.warm_up() if warm_up and options.compile_blocks and settings.sp_degree == 1 else None
    logger.info(
        "pipeline loaded",
        extra={
            "weights": str(settings.weights),
            "device": options.device,
            "rank": rank,
            "load_s": round(load_s, 3),
            "warm_up_s": None if warm_up_s is None else round(warm_up_s, 3),
            "text_encoder_placement": options.text_encoder,
            "model_offload": options.model_offload,
            "offload_blocks": options.offload_blocks,
            "compile_dit": options.compile_blocks,
        },
    )
    return pipeline
