"""hyv/service/model_loading.py: the worker's memory settings become the pipeline's options, bad values
are refused with the setting's name and the choices, and a compiling worker warms up at load."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from hyv.engine.memory_options import VAETileSizes
from hyv.service.job_memory import memory_usage
from hyv.service.model_loading import load_pipeline, pipeline_options
from hyv.service.settings import Settings


def _settings(weights: Path | None = None, **values: Any) -> Settings:
    base: dict[str, Any] = {"device": "cpu", "dtype": "fp32"}
    if weights is not None:
        base["weights"] = weights
    return Settings(_env_file=None, **base, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("settings", "option", "value"),
    [
        ({}, "text_encoder", "device"),
        ({"text_encoder_placement": "offload"}, "text_encoder", "offload"),
        ({"text_encoder_placement": "cpu"}, "text_encoder", "cpu"),
        ({}, "model_offload", False),
        ({"model_offload": True}, "model_offload", True),
        ({}, "offload_blocks", False),
        ({"offload_blocks": True}, "offload_blocks", True),
        ({}, "compile_blocks", False),
        ({"compile_dit": True}, "compile_blocks", True),
        ({}, "attention_backend", None),
        ({"attention_backend": "auto"}, "attention_backend", None),
        ({"attention_backend": "sdpa"}, "attention_backend", "sdpa"),
        ({"attention_backend": "Flash"}, "attention_backend", "fa2"),  # aliases as hyv.kernels takes them
        ({}, "vae_tiling", None),
        ({"vae_tile_size": 128}, "vae_tiling", VAETileSizes(sample_size=128)),
        ({"vae_tile_frames": 16}, "vae_tiling", VAETileSizes(sample_frames=16)),
        ({"vae_tile_overlap": 0.5}, "vae_tiling", VAETileSizes(overlap=0.5)),
        (
            {"vae_tile_size": 64, "vae_tile_frames": 8, "vae_tile_overlap": 0.0},
            "vae_tiling",
            VAETileSizes(64, 8, 0.0),
        ),
    ],
)
def test_each_memory_setting_becomes_its_pipeline_option(settings: dict, option: str, value: object) -> None:
    options = pipeline_options(_settings(**settings))
    assert getattr(options, option) == value
    assert (options.device, options.dtype) == ("cpu", torch.float32)


def test_the_settings_come_from_the_hyv_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HYV_TEXT_ENCODER_PLACEMENT": "offload",
        "HYV_MODEL_OFFLOAD": "1",
        "HYV_OFFLOAD_BLOCKS": "true",
        "HYV_COMPILE_DIT": "yes",
        "HYV_ATTENTION_BACKEND": "torch",
        "HYV_VAE_TILE_SIZE": "128",
        "HYV_VAE_TILE_FRAMES": "32",
        "HYV_VAE_TILE_OVERLAP": "0.5",
    }.items():
        monkeypatch.setenv(name, value)
    options = pipeline_options(Settings(_env_file=None, device="cpu"))  # type: ignore[call-arg]
    assert (options.text_encoder, options.model_offload, options.offload_blocks, options.compile_blocks) == (
        "offload",
        True,
        True,
        True,
    )
    assert options.attention_backend == "sdpa"
    assert options.vae_tiling == VAETileSizes(128, 32, 0.5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"text_encoder_placement": "gpu"},
            "text_encoder_placement\n  Input should be 'device', 'offload' or 'cpu'",
        ),
        (
            {"attention_backend": "cudnn"},
            "attention_backend\n  Value error, unknown attention backend 'cudnn'; "
            "choose one of auto, fa3, fa2, xformers, sdpa",
        ),
        ({"vae_tile_size": 0}, "vae_tile_size\n  Input should be greater than 0"),
        ({"vae_tile_frames": -4}, "vae_tile_frames\n  Input should be greater than 0"),
        ({"vae_tile_overlap": 1.0}, "vae_tile_overlap\n  Input should be less than 1"),
        ({"model_offload": "sometimes"}, "model_offload\n  Input should be a valid boolean"),
    ],
)
def test_invalid_memory_settings_name_the_setting(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        _settings(**settings)


def test_tile_sizes_that_do_not_fit_the_vae_fail_the_load(tiny_bundle: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape("tile sample_size must be a positive multiple of 8, got 100")
    ):
        load_pipeline(_settings(tiny_bundle, vae_tile_size=100))


def test_an_offloading_worker_loads_runs_and_reports_its_memory(tiny_bundle: Path) -> None:
    from hyv.engine.request import GenerationRequest

    pipeline = load_pipeline(_settings(tiny_bundle, model_offload=True, text_encoder_placement="cpu"))
    assert pipeline.placement.location == {"text_encoder": "cpu", "dit": "cpu", "vae": "cpu"}
    assert pipeline.visiting_weight_bytes == 0  # on the CPU nothing moves
    pipeline.generate(GenerationRequest(prompt="a red circle", width=32, height=32, num_frames=5, steps=1))
    report = memory_usage(pipeline)
    assert set(report) == {"process_rss"} and report["process_rss"] > 50 * 2**20


def test_a_compiling_worker_warms_up_at_load_and_a_group_rank_leaves_it_to_the_group(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Compilation itself is switched off here (minutes of code generation on 2 cores; the engine's
    tests compile); what is checked is that the load runs the warm-up, or leaves it to the group."""
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    caplog.set_level(logging.INFO, logger="hyv")

    def loaded(warm_up: bool = True, **values: Any) -> dict[str, Any]:
        caplog.clear()
        load_pipeline(_settings(tiny_bundle, **values), warm_up=warm_up)
        [record] = [r for r in caplog.records if r.getMessage() == "pipeline loaded"]
        return record.__dict__

    assert loaded(compile_dit=False)["warm_up_s"] is None
    assert loaded(compile_dit=True)["warm_up_s"] > 0
    warmed = [r for r in caplog.records if r.getMessage() == "pipeline warmed up"]
    assert len(warmed) == 1 and (warmed[0].__dict__["width"], warmed[0].__dict__["height"]) == (32, 32)
    assert loaded(compile_dit=True, warm_up=False)["warm_up_s"] is None
    threads = torch.get_num_threads()  # a CPU group's rank takes its share of the cores
    try:
        assert loaded(compile_dit=True, sp_degree=2)["warm_up_s"] is None  # warms up after wrapping
    finally:
        torch.set_num_threads(threads)
