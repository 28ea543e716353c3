"""LoRA adapters on the bundled model: applied per request without reloading, taken off bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyv.engine.lora import LoraLibrary, applied_loras, merged_weights
from hyv.engine.lora_folder import parse_lora_option
from hyv.engine.lora_formats import LoraError, LoraTargets
from hyv.engine.pipeline import VideoPipeline
from hyv.engine.request import GenerationRequest, LoraChoice

PROMPT = "a red circle moving right on a black background"
LAYERS = ("double_blocks.0.img_attn_qkv", "single_blocks.0.linear1", "final_layer.linear")


def write_adapter(
    path: Path,
    targets: LoraTargets,
    seed: int,
    rank: int = 4,
    size: float = 0.5,
    layers: tuple[str, ...] = LAYERS,
) -> dict[str, torch.Tensor]:
    """A native-format adapter (`<module>.lora_A/B.weight`, alpha) that visibly changes the video."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module in layers:
        rows, cols = targets.shapes[module]
        tensors[f"{module}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) / cols**0.5
        tensors[f"{module}.lora_B.weight"] = size * torch.randn(rows, rank, generator=generator) / rank**0.5
        tensors[f"{module}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return tensors


@pytest.fixture
def library(bundled_pipeline: VideoPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoraLibrary:
    targets = LoraTargets.of(bundled_pipeline.dit)
    write_adapter(tmp_path / "wobble.safetensors", targets, seed=1)
    write_adapter(
        tmp_path / "tint.safetensors",
        targets,
        seed=2,
        layers=("final_layer.linear", "double_blocks.1.img_mlp.fc2"),
    )
    library = LoraLibrary(tmp_path, cache_size=2)
    monkeypatch.setattr(bundled_pipeline, "loras", library)
    return library


def video(pipeline: VideoPipeline, *loras: tuple[str, float]) -> torch.Tensor:
    request = GenerationRequest(
        prompt=PROMPT, seed=3, num_frames=17, loras=tuple(LoraChoice(name=n, scale=s) for n, s in loras)
    )
    return torch.cat(list(pipeline.frames(request)), dim=2)


def state(pipeline: VideoPipeline) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipeline.dit.state_dict().items()}


def test_loras_change_the_video_and_come_off_bit_for_bit(
    bundled_pipeline: VideoPipeline, library: LoraLibrary
) -> None:
    before = state(bundled_pipeline)
    base = video(bundled_pipeline)
    wobble = video(bundled_pipeline, ("wobble", 1.0))
    assert (wobble - base).abs().mean() > 0.01  # visible: more than 1% of the range per pixel
    assert torch.equal(video(bundled_pipeline), base)  # no adapter after one: the base model exactly
    assert torch.equal(video(bundled_pipeline, ("wobble", 0.0)), base)  # scale 0 = not applied
    tint = video(bundled_pipeline, ("tint", 1.0))
    assert torch.equal(video(bundled_pipeline, ("wobble", 1.0)), wobble)  # after another: as alone
    both = video(bundled_pipeline, ("wobble", 1.0), ("tint", 1.0))
    assert not torch.equal(both, wobble) and not torch.equal(both, tint)
    assert torch.equal(video(bundled_pipeline, ("tint", 1.0)), tint)
    after = bundled_pipeline.dit.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert library.cached == ["wobble", "tint"]  # loaded once each, least recently used first


def test_two_adapters_add_their_deltas(bundled_pipeline: VideoPipeline, library: LoraLibrary) -> None:
    dit = bundled_pipeline.dit
    wobble, tint = library.load("wobble", dit), library.load("tint", dit)
    merged = merged_weights(dit, [(wobble, 1.0), (tint, -0.5)])
    assert sorted(merged) == sorted({*wobble.parts, *tint.parts})
    for name, weight in merged.items():
        original = dit.get_submodule(name).weight
        shape = tuple(original.shape)
        want = original + wobble.delta(name, shape) - 0.5 * tint.delta(name, shape)  # type: ignore[arg-type]
        torch.testing.assert_close(weight, want, rtol=0, atol=1e-6)
    # inside the block the layers hold the merged weights; outside, the very same Parameters again
    layer = dit.get_submodule("final_layer.linear")
    original = layer.weight
    with applied_loras(dit, [(wobble, 1.0), (tint, -0.5)]):
        assert torch.equal(layer.weight, merged["final_layer.linear"])
    assert layer.weight is original


def test_a_bad_adapter_is_refused_before_the_job_and_leaves_the_weights(
    bundled_pipeline: VideoPipeline, library: LoraLibrary, tmp_path: Path
) -> None:
    targets = LoraTargets.of(bundled_pipeline.dit)
    tensors = write_adapter(tmp_path / "broken.safetensors", targets, seed=4)
    tensors["final_layer.linear.lora_B.weight"] = torch.full_like(
        tensors["final_layer.linear.lora_B.weight"], float("nan")
    )
    tensors["double_blocks.0.img_attn_qkv.lora_A.weight"] = torch.randn(4, 7)
    tensors["double_blocks.0.no_such_layer.lora_A.weight"] = torch.randn(4, 7)
    save_file(tensors, str(tmp_path / "broken.safetensors"))
    before = state(bundled_pipeline)
    request = GenerationRequest(prompt=PROMPT, loras=(LoraChoice(name="wobble"), LoraChoice(name="broken")))
    with pytest.raises(LoraError) as info:
        bundled_pipeline.plan(request)
    message = str(info.value)
    assert "double_blocks.0.no_such_layer.lora_A.weight" in message
    assert "double_blocks.0.img_attn_qkv" in message and "(4, 7)" in message
    assert "final_layer.linear" in message and "NaN or inf" in message
    with pytest.raises(
        LoraError, match=r"no LoRA named 'missing'; available: \['broken', 'tint', 'wobble'\]"
    ):
        bundled_pipeline.plan(GenerationRequest(prompt=PROMPT, loras=(LoraChoice(name="missing"),)))
    # an exception inside the block puts the originals back too
    with (
        pytest.raises(RuntimeError),
        applied_loras(bundled_pipeline.dit, [(library.load("wobble", bundled_pipeline.dit), 1.0)]),
    ):
        raise RuntimeError("job failed")
    after = bundled_pipeline.dit.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_cache_is_lru_and_rereads_a_replaced_file(
    bundled_pipeline: VideoPipeline, library: LoraLibrary, tmp_path: Path
) -> None:
    dit = bundled_pipeline.dit
    targets = LoraTargets.of(dit)
    write_adapter(tmp_path / "third.safetensors", targets, seed=5)
    first = library.load("wobble", dit)
    assert library.load("wobble", dit) is first
    library.load("tint", dit)
    library.load("third", dit)
    assert library.cached == ["tint", "third"]  # size 2: wobble, the least recently used, went
    write_adapter(tmp_path / "third.safetensors", targets, seed=6, rank=2)
    assert library.load("third", dit).parts["final_layer.linear"][0].down.shape[0] == 2


def test_lora_option_parsing() -> None:
    assert parse_lora_option("bouncing") == ("bouncing", 1.0)
    assert parse_lora_option("bouncing:0.5") == ("bouncing", 0.5)
    assert parse_lora_option("/a/b/c.safetensors:-1") == ("/a/b/c.safetensors", -1.0)
    assert parse_lora_option("C:/x.safetensors") == ("C:/x.safetensors", 1.0)


@pytest.mark.slow
def test_sequence_parallel_ranks_apply_the_same_adapters(tmp_path: Path) -> None:
    """`hyv generate --sp 2` path: each rank's pipeline resolves the request's adapter from the
    bundle's loras/ folder and merges it into its own DiT; the video matches one process's."""
    from hyv.engine.bundle import init_random_bundle, save_bundle
    from hyv.engine.parallel.generate import generate_sequence_parallel
    from hyv.engine.pipeline import PipelineOptions
    from hyv.engine.video_io import read_mp4

    bundle = save_bundle(init_random_bundle("tiny", seed=0), tmp_path / "bundle")
    (bundle / "loras").mkdir()
    single = VideoPipeline.from_dir(bundle, PipelineOptions(device="cpu", dtype=torch.float32))
    write_adapter(bundle / "loras" / "wobble.safetensors", LoraTargets.of(single.dit), seed=1, size=2.0)
    request = GenerationRequest(prompt="a red kite", steps=2, seed=3, num_frames=9)
    with_lora = request.model_copy(update={"loras": (LoraChoice(name="wobble"),)})
    base = read_mp4(single.generate(request).mp4).astype(int)
    adapted = read_mp4(single.generate(with_lora).mp4).astype(int)
    assert abs(adapted - base).mean() > 2
    options = PipelineOptions(device="cpu", dtype=torch.float32)
    summary = generate_sequence_parallel(bundle, with_lora, options, tmp_path / "sp.mp4", 2)
    assert summary["loras"] == [{"name": "wobble", "scale": 1.0}]
    assert abs(read_mp4(tmp_path / "sp.mp4").astype(int) - adapted).max() <= 1  # ~1e-6 apart before uint8
