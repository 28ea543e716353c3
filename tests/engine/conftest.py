"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.pipeline import PipelineOptions, VideoPipeline


@pytest.fixture(scope="module")
def bundled_pipeline() -> Iterator[VideoPipeline]:
    """The bundled model (weights/hyv-small) as `hyv generate` loads it on the CPU, on both cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield VideoPipeline.from_dir(DEFAULT_BUNDLE_DIR, PipelineOptions(device="cpu", dtype=torch.float32))
    finally:
        torch.set_num_threads(threads)
