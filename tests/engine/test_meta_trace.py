"""The 13B DiT traced on the meta device (hyv/engine/meta_trace.py): shapes, FLOPs, memory, and the
sizing tables of docs/operations.md, which must be exactly what the trace prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hyv.engine import meta_trace
from hyv.engine.meta_trace import (
    SizingReport,
    StepTrace,
    build_meta_dit,
    sizing_markdown,
    sizing_report,
    trace_step,
)
from hyv.kernels._common import interpret_mode, triton_available
from hyv.models.dit import trim_text_padding

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
TOKENS_720P = 33 * 45 * 80  # 33x90x160 latents, 1x2x2 patches
HIDDEN, MLP, DEPTH, TEXT = 3072, 12288, 60, 256
# Per token, every block runs linears with 3072 x (3*3072 + 3072 + 12288) + 12288 x 3072 weights:
# qkv, out-projection, MLP in and out (double-stream: per stream; single-stream: linear1, linear2).
BLOCK_LINEAR_PARAMS = HIDDEN * (3 * HIDDEN + HIDDEN + MLP) + MLP * HIDDEN


@pytest.fixture(scope="module")
def step_720p() -> StepTrace:
    return trace_step(720, 1280, 129)


def test_720p_step_shapes_and_flops(step_720p: StepTrace) -> None:
    t = step_720p
    assert t.latent == (16, 33, 90, 160)
    assert t.video_tokens == TOKENS_720P == 118_800
    assert t.output_shape == (1, 16, 33, 90, 160)
    L = TOKENS_720P + TEXT
    # attention: QK^T and PV, 2 * 2 * L^2 * hidden per block, plus the token refiner's two blocks over
    # the 256 text tokens; counted exactly
    assert t.attention_flops == DEPTH * 4 * L**2 * HIDDEN + 2 * 4 * TEXT**2 * HIDDEN
    # the rest is the blocks' per-token linears, plus what runs once per sample or on the text only
    # (modulation vectors, patch embedding, token refiner, final layer): about 2e-5 of the total
    analytic = t.attention_flops + DEPTH * 2 * L * BLOCK_LINEAR_PARAMS
    assert 0 < t.flops - analytic < 1e-4 * t.flops
    assert 1.20e16 < t.flops < 1.21e16
    assert t.attention_share == pytest.approx(0.866, abs=0.001)
    assert set(t.flops_by_op) == {"addmm", "convolution", "_scaled_dot_product_flash_attention"}


def test_720p_step_memory(step_720p: StepTrace) -> None:
    t = step_720p
    assert t.fused_kernels == triton_available()
    # the single-stream MLP's input projection, its GELU and the concatenation with the attention
    # output live together: (4 + 4 + 5) * hidden bf16 values per token, a floor for the peak
    floor = (TOKENS_720P + TEXT) * (4 + 4 + 5) * HIDDEN * 2
    assert floor < t.activation_peak_bytes < 2 * floor


def test_trace_leaves_no_state_behind(step_720p: StepTrace) -> None:
    from hyv.kernels import _common

    assert _common._recorder is None
    assert not torch.distributed.is_initialized()
    assert step_720p.launches  # the fused kernels' launches, recorded instead of run


def test_trim_text_padding_keeps_a_meta_mask() -> None:
    text = torch.empty(1, 256, 32, device="meta")
    mask = torch.ones(1, 256, dtype=torch.bool, device="meta")
    out_text, out_mask = trim_text_padding(text, mask)
    assert out_text is text and out_mask is mask


def test_text_encoder_parameter_counts_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8,
    )  # fmt: skip
    clip = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77,
    )  # fmt: skip
    with torch.device("meta"):
        n_llama = sum(p.numel() for p in transformers.LlamaModel(llama).parameters())
        n_clip = sum(p.numel() for p in transformers.CLIPTextModel(clip).parameters())
    assert (n_llama, n_clip) == (meta_trace.llama_params(), meta_trace.clip_text_params())


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
@pytest.mark.skipif(interpret_mode(), reason="compiling needs a session without TRITON_INTERPRET")
def test_model_launches_are_in_the_aot_registry(step_720p: StepTrace) -> None:
    from hyv.kernels import aot

    registry = {aot.specialize(launch, 80).key() for launch in aot.registry(["bf16"])}
    launched = {aot.specialize(launch, 80).key() for launch in step_720p.launches}
    assert launched <= registry


@pytest.fixture(scope="module")
def report() -> SizingReport:
    return sizing_report()


@pytest.mark.slow
def test_docs_sizing_tables_are_the_trace(report: SizingReport) -> None:
    assert sizing_markdown(report) in DOCS.read_text(), (
        "docs/operations.md's sizing tables differ from the trace: paste the output of "
        "`python -m hyv.engine.meta_trace` between the markers"
    )
    json.dumps(report.to_dict())  # the --json output is plain JSON


@pytest.mark.slow
def test_sequence_parallel_traces(report: SizingReport) -> None:
    for size in meta_trace.SP_SIZES:
        one = report.trace(*size, sp_degree=1)
        for n in meta_trace.SP_DEGREES[1:]:
            t = report.trace(*size, sp_degree=n)
            assert t.output_shape == one.output_shape  # every rank gets the whole latent
            # the work splits N ways, but every rank runs the blocks' linears on all 256 text
            # tokens (and the embeddings and the token refiner, ~1e-4 of a rank's share)
            text_linears = DEPTH * 2 * TEXT * BLOCK_LINEAR_PARAMS * (1 - 1 / n)
            assert t.flops == pytest.approx(one.flops / n + text_linears, rel=5e-4)
            assert t.activation_peak_bytes < one.activation_peak_bytes
    t544 = report.trace(544, 960, 129)
    assert t544.output_shape == (1, 16, 33, 68, 120) and t544.video_tokens == 67_320
    w = report.weights
    assert w.dit == 2 * build_meta_dit().num_parameters() == 2 * 12_821_012_544
    assert w.dit_fp8 < 0.52 * w.dit  # the blocks' linears are ~97% of the weights


@pytest.mark.slow
def test_first_fit_picks_the_fastest_option_that_fits(report: SizingReport) -> None:
    t = report.trace(720, 1280, 129)
    headroom = meta_trace.CONTEXT_HEADROOM_BYTES
    assert meta_trace.first_fit(report, t, 80) == "none"
    for gb in meta_trace.GPU_MEMORY_GB:
        option = meta_trace.first_fit(report, t, gb)
        assert option is not None, gb
        assert report.gpu_bytes(t, option) + headroom <= gb * 10**9
        faster = list(meta_trace.MEMORY_OPTIONS)[: list(meta_trace.MEMORY_OPTIONS).index(option)]
        assert all(report.gpu_bytes(t, o) + headroom > gb * 10**9 for o in faster)
    assert meta_trace.first_fit(report, t, 4) is None  # nothing fits a 4 GB card
