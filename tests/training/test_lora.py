"""LoRA training (hyv/training/lora) on the tiny bundle at 32x32x5: targets, the training forward
against the engine's merge of the saved file (what serving applies), the native file's keys /
shapes / metadata, the held-out evaluation, exact resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyv.engine.bundle import init_random_bundle, load_bundle, save_bundle
from hyv.engine.lora import applied_loras, merged_weights
from hyv.engine.lora_formats import LoraAdapter, LoraError, LoraTargets, read_lora_file
from hyv.training.lora.adapter import (
    ADAPTER_FORMAT,
    DEFAULT_TARGETS,
    LoRAAdapter,
    adapted_forward,
    adapted_weights,
    resolve_targets,
    save_adapter,
)
from hyv.training.lora.config import BOUNCING_TRIGGER, LoRATrainConfig
from hyv.training.lora.evaluate import LoRAEvalConfig, evaluate_adapter
from hyv.training.lora.trainer import LoRATrainer
from hyv.training.state import list_checkpoints

SIZE, FRAMES = 32, 5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_bundle(init_random_bundle("tiny", seed=0), tmp_path_factory.mktemp("tiny") / "bundle")


def _config(base: Path, out_dir: Path, **changes: object) -> LoRATrainConfig:
    fields: dict[str, object] = dict(
        base=base,
        out_dir=out_dir,
        steps=6,
        batch_size=2,
        rank=4,
        alpha=8.0,
        warmup_steps=1,
        num_frames=FRAMES,
        size=SIZE,
        dataset_length=64,
        cache_videos=8,
        prior_videos=4,
        checkpoint_every=3,
        progress=False,
    )
    fields.update(changes)
    return LoRATrainConfig(**fields)  # type: ignore[arg-type]


def _random_adapter(model: torch.nn.Module, rank: int = 4, alpha: float = 8.0) -> LoRAAdapter:
    adapter = LoRAAdapter.for_model(model, DEFAULT_TARGETS, rank, alpha, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for b in adapter.lora_B.values():  # B starts at zero; make the update visible
            b.copy_(0.05 * torch.randn(b.shape, generator=generator))
    return adapter


def _read(path: Path, model: torch.nn.Module) -> LoraAdapter:
    """The saved file as serving reads it."""
    return read_lora_file(path, LoraTargets.of(model))


def _ranks(adapter: LoraAdapter) -> set[int]:
    return {part.down.shape[0] for parts in adapter.parts.values() for part in parts}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rank", 0),
        ("alpha", 0.0),
        ("targets", ()),
        ("min_sigma", 1.0),
        ("image_fraction", 0.2),
        ("num_frames", 1),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"LoRATrainConfig.{field}="):
        _config(tmp_path, tmp_path, **{field: value})


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_eval_config_rejects_a_non_finite_scale(scale: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"adapter scales must be finite, got {scale!r}"):
        LoRAEvalConfig(base=tmp_path, adapter=tmp_path / "a.safetensors", scales=(1.0, scale))


def test_targets_are_the_dits_linear_paths(base_dir: Path) -> None:
    dit = load_bundle(base_dir).dit
    paths = resolve_targets(dit, DEFAULT_TARGETS)
    double, single = dit.config.depth_double, dit.config.depth_single
    assert len(paths) == 8 * double + 2 * single
    assert "double_blocks.0.img_attn_qkv" in paths and f"single_blocks.{single - 1}.linear2" in paths
    assert resolve_targets(dit, ["single_blocks.0.linear1"]) == ["single_blocks.0.linear1"]
    with pytest.raises(ValueError, match=r"'double_blocks\.\*\.nope' matches no Linear"):
        resolve_targets(dit, ["double_blocks.*.nope"])
    with pytest.raises(ValueError, match="LoRA rank must be"):
        LoRAAdapter.for_model(dit, DEFAULT_TARGETS, 0, 1.0)


def test_training_forward_equals_the_served_merge_and_leaves_the_dit_alone(
    base_dir: Path, tmp_path: Path
) -> None:
    dit = load_bundle(base_dir).dit.eval()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    adapter = _random_adapter(dit)
    path = save_adapter(adapter, tmp_path / "a.safetensors", {"base_model": "tiny"})
    loaded = _read(path, dit)
    assert loaded.format == "native" and loaded.modules == sorted(adapter.paths)
    c = dit.config
    torch.manual_seed(0)
    in_channels = c.latent_channels * 2 + 1 if c.image_condition == "latent_concat" else c.latent_channels
    x = torch.randn(2, in_channels, 2, 4, 4)
    t = torch.tensor([900.0, 300.0])
    text = torch.randn(2, 6, c.text_dim)
    mask = torch.ones(2, 6, dtype=torch.bool)
    pooled = torch.randn(2, c.pooled_dim)
    guidance = torch.full((2,), 4000.0) if c.guidance_embed else None
    with torch.no_grad():
        base = dit(x, t, text, mask, pooled, guidance)
        hooked = adapted_forward(dit, adapter, x, t, text, mask, pooled, guidance)
        trained = adapted_weights(dit, adapter)
        with applied_loras(dit, [(loaded, 1.0)]):
            merged = dit(x, t, text, mask, pooled, guidance)
        with applied_loras(dit, [(loaded, 0.5)]):
            half = dit(x, t, text, mask, pooled, guidance)
        with applied_loras(dit, [(loaded, 0.0)]):
            zero = dit(x, t, text, mask, pooled, guidance)
        after = dit(x, t, text, mask, pooled, guidance)
    assert (hooked - base).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(hooked, merged, atol=1e-6)
    assert not torch.allclose(half, merged, atol=1e-4)
    assert torch.equal(zero, base) and torch.equal(after, base)  # the DiT's own weights are back
    for name, weight in merged_weights(dit, [(loaded, 1.0)]).items():
        torch.testing.assert_close(weight, trained[f"{name}.weight"], rtol=0, atol=1e-6)
    for name, weight in merged_weights(dit, [(loaded, 0.5)]).items():
        base_weight = dit.get_submodule(name).weight
        want = base_weight + 0.5 * (trained[f"{name}.weight"] - base_weight)
        torch.testing.assert_close(weight, want, rtol=0, atol=1e-6)
    for name, weight in merged_weights(dit, [(loaded, 0.0)]).items():  # scale 0: the base weights
        assert torch.equal(weight, before[f"{name}.weight"]), name
    for name, value in dit.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_evaluation_applies_the_saved_adapter_as_served(base_dir: Path, tmp_path: Path) -> None:
    """`hyv train lora-eval` on the tiny bundle: the adapter changes the videos at scale 1, not at
    scale 0, and the base model's videos are the same after the merges."""
    adapter = _random_adapter(load_bundle(base_dir).dit)
    path = save_adapter(adapter, tmp_path / "a.safetensors", {"base_model": "hyv-tiny"})
    out = tmp_path / "eval.json"
    report = evaluate_adapter(LoRAEvalConfig(base=base_dir, adapter=path, out=out, samples_per_combination=1))
    assert report["adapter_metadata"]["base_model"] == "hyv-tiny"
    assert report["adapter_metadata"]["format"] == ADAPTER_FORMAT
    assert report["scale0_identical"] and report["base_untouched"]
    assert not report["scales"]["1.0"]["identical_to_base"]
    assert report["without_adapter"]["n"] == 10 and report["other_motions"]["with_adapter"]["n"] == 44
    assert json.loads(out.read_text())["scales"].keys() == {"0.0", "1.0"}


def test_saved_files_with_problems_are_refused_by_name(base_dir: Path, tmp_path: Path) -> None:
    dit = load_bundle(base_dir).dit
    targets = LoraTargets.of(dit)
    good = load_file(str(save_adapter(_random_adapter(dit), tmp_path / "good.safetensors", {})))
    key = "double_blocks.0.img_attn_qkv"
    names = {"a": f"{key}.lora_A.weight", "b": f"{key}.lora_B.weight", "alpha": f"{key}.alpha"}
    a, b, alpha = good[names["a"]], good[names["b"]], good[names["alpha"]]
    cases = {
        "nan": (
            {names["a"]: a * float("nan"), names["b"]: b, names["alpha"]: alpha},
            "down holds NaN or inf",
        ),
        "nan_alpha": (
            {names["a"]: a, names["b"]: b, names["alpha"]: torch.tensor(float("nan"))},
            "alpha is nan",
        ),
        "no_b": ({names["a"]: a, names["alpha"]: alpha}, r"up \(lora_B\) is missing"),
        "no_a": ({names["b"]: b, names["alpha"]: alpha}, r"down \(lora_A\) is missing"),
        "ranks": ({names["a"]: a, names["b"]: b[:, :2], names["alpha"]: alpha}, "rank mismatch"),
        "alpha_shape": ({names["a"]: a, names["b"]: b, names["alpha"]: alpha.repeat(2)}, "not a scalar"),
        "extra": (
            {names["a"]: a, names["b"]: b, names["alpha"]: alpha, "x.weight": a.clone()},
            r"name no adaptable layer of this DiT: x\.weight",
        ),
    }
    for name, (tensors, problem) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": ADAPTER_FORMAT}
        )
        with pytest.raises(LoraError, match=problem):
            read_lora_file(path, targets)
    wrong = LoRAAdapter({key: (7, int(a.shape[1]))}, 4, 4.0)
    path = save_adapter(wrong, tmp_path / "wrong.safetensors", {})
    with pytest.raises(LoraError, match=rf"{key}.*wrong shapes.*up \(7, 4\)"):
        read_lora_file(path, targets)


def test_training_writes_the_native_file(base_dir: Path, tmp_path: Path) -> None:
    config = _config(base_dir, tmp_path / "run", output=tmp_path / "loras" / "bouncing.safetensors")
    trainer = LoRATrainer(config)
    base_weights = {k: v.clone() for k, v in trainer.dit.state_dict().items()}
    path = trainer.train()
    assert path == config.output and path.is_file()
    assert len(trainer.history) == 6 and all(loss > 0 for loss in trainer.history)
    for name, value in trainer.dit.state_dict().items():  # the base stays frozen
        assert torch.equal(value, base_weights[name]), name
    tensors = load_file(str(path))
    modules = resolve_targets(trainer.dit, DEFAULT_TARGETS)
    suffixes = (".lora_A.weight", ".lora_B.weight", ".alpha")
    assert sorted(tensors) == sorted(m + suffix for m in modules for suffix in suffixes)
    shapes = {name: tuple(m.weight.shape) for name, m in trainer.dit.named_modules() if name in modules}
    adapter = _read(path, trainer.dit)
    assert adapter.format == "native" and adapter.modules == sorted(modules)
    for name, parts in adapter.parts.items():
        out_features, in_features = shapes[name]
        a, b, alpha = (tensors[name + suffix] for suffix in suffixes)
        assert tuple(a.shape) == (4, in_features) and tuple(b.shape) == (out_features, 4)
        assert alpha.shape == () and float(alpha) == 8.0
        assert b.abs().max() > 0  # trained away from its zero init
        (part,) = parts  # the whole weight, with alpha / rank = 2 folded into up
        assert (part.start, part.stop) == (0, out_features)
        assert torch.equal(part.down, a) and torch.equal(part.up, b * 2.0)
    meta = adapter.metadata
    assert meta["format"] == ADAPTER_FORMAT and meta["base_model"] == "hyv-tiny"
    assert (meta["rank"], meta["alpha"], meta["steps"]) == ("4", "8.0", "6")
    assert json.loads(meta["targets"]) == list(DEFAULT_TARGETS) and json.loads(meta["modules"]) == modules
    assert meta["trigger"] == BOUNCING_TRIGGER
    assert path.stat().st_size < 200_000


class _InterruptedError(Exception):
    pass


def test_resume_continues_exactly(base_dir: Path, tmp_path: Path) -> None:
    """A run killed after its step-3 checkpoint and resumed ends exactly as an uninterrupted one
    (cosine schedule over all 6 steps, the same clips and noise per step)."""
    full = LoRATrainer(_config(base_dir, tmp_path / "a"))
    full.train()

    def interrupt(step: int, loss: float) -> None:
        if step == 4:  # after step 4 ran, before its checkpoint (every 3): step 3's is the newest
            raise _InterruptedError

    config = _config(base_dir, tmp_path / "b")
    with pytest.raises(_InterruptedError):
        LoRATrainer(config).train(interrupt)
    assert [s for s, _ in list_checkpoints(config.out_dir)] == [3]
    resumed = LoRATrainer(config.replace(resume=True))
    assert resumed.step == 3
    resumed.train()
    assert resumed.history == full.history
    a, b = _read(full.config.adapter_path, full.dit), _read(resumed.config.adapter_path, resumed.dit)
    assert a.modules == b.modules
    for name, parts in a.parts.items():
        (part_a,), (part_b,) = parts, b.parts[name]
        assert torch.equal(part_a.down, part_b.down) and torch.equal(part_a.up, part_b.up), name


def test_timesteps_are_the_schedule_levels(base_dir: Path, tmp_path: Path) -> None:
    trainer = LoRATrainer(_config(base_dir, tmp_path / "s", min_sigma=0.9, steps=1))
    drawn = trainer.sample_sigmas(256, torch.Generator().manual_seed(0))
    expected = torch.tensor([s for s in trainer.sigmas if s >= 0.9], dtype=torch.float32)
    assert torch.equal(torch.unique(drawn), torch.unique(expected))  # every level, and nothing else
    assert min(trainer.sigmas) == 0.0 and len(expected) < len(trainer.sigmas) - 1


def test_lora_command(base_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from hyv.training.lora.cli import lora_command

    app = typer.Typer()
    app.command("lora")(lora_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    args = ["lora", "--base", str(base_dir), "--out", str(tmp_path), "--steps", "2", "--batch-size", "2"]
    args += ["--rank", "2", "--targets", "single_blocks.*.linear1", "--threads", "1", "--cache-videos", "4"]
    args += ["--prior-fraction", "0"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["steps"] == 2 and Path(line["adapter"]).is_file()
    adapter = _read(Path(line["adapter"]), load_bundle(base_dir).dit)
    assert adapter.modules == sorted(f"single_blocks.{i}.linear1" for i in range(len(adapter.parts)))
    assert _ranks(adapter) == {2}
    bad = CliRunner().invoke(app, [*args, "--targets", "nope.*"])
    assert bad.exit_code != 0 and "matches no Linear" in bad.output


def test_prior_preservation_rows_come_from_the_base_data(base_dir: Path, tmp_path: Path) -> None:
    config = _config(base_dir, tmp_path / "p", batch_size=4, prior_fraction=0.5, prior_videos=6, steps=2)
    trainer = LoRATrainer(config)
    assert trainer.prior is not None and trainer.prior_rows == 2
    assert len(trainer.prior.captions) == 6 and all("bouncing" not in c for c in trainer.prior.captions)
    assert all("bouncing" in c for c in trainer.clips.captions)
    path = trainer.train()
    assert _read(path, trainer.dit).metadata["prior_fraction"] == "0.5"
    with pytest.raises(ValueError, match="prior_fraction"):
        _config(base_dir, tmp_path, batch_size=1, prior_fraction=0.3)
