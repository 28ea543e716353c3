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
        device=device, dtype=parse_dtype(settings.dtype) or dtype, dit_dtype=settings.dit_dtype
    )


def load_pipeline(settings: Settings, rank: int = 0) -> Any:
    """The settings' model on its device (a GPU if there is one), with the job memory limit set."""
    from hyv.engine.pipeline import VideoPipeline

    start = time.perf_counter()
    options = pipeline_options(settings, rank)
    pipeline = VideoPipeline.from_dir(settings.weights, options, settings.text_encoder)
    limit_job_memory(settings, pipeline.device)
    logger.info(
        "pipeline loaded",
        extra={
            "weights": str(settings.weights),
            "device": options.device,
            "rank": rank,
            "load_s": round(time.perf_counter() - start, 3),
        },
    )
    return pipeline
