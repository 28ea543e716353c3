"""Loading the served model in a worker's pool process."""

from __future__ import annotations

import logging
import time
from typing import Any

from hyv.service.job_memory import limit_job_memory
from hyv.service.settings import Settings

logger = logging.getLogger(__name__)

LOAD_RETRY_S = 60.0  # a worker whose model failed to load tries again at most this often


def load_pipeline(settings: Settings) -> Any:
    """The settings' model on its device (a GPU if there is one), with the job memory limit set."""
    import torch

    from hyv.engine.pipeline import PipelineOptions, VideoPipeline, default_device_and_dtype
    from hyv.models.checkpoint_io import parse_dtype

    start = time.perf_counter()
    device, dtype = default_device_and_dtype()
    device = settings.device or device
    if not device.startswith("cuda"):
        dtype = torch.float32  # bf16 is the default on GPUs only
    options = PipelineOptions(device=device, dtype=parse_dtype(settings.dtype) or dtype)
    pipeline = VideoPipeline.from_dir(settings.weights, options, settings.text_encoder)
    limit_job_memory(settings, pipeline.device)
    logger.info(
        "pipeline loaded",
        extra={
            "weights": str(settings.weights),
            "device": options.device,
            "load_s": round(time.perf_counter() - start, 3),
        },
    )
    return pipeline
