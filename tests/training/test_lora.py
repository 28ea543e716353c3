"""LoRA training (hyv/training/lora) on the tiny bundle at 32x32x5: targets, the training forward
against the merged weights, the native file's keys / shapes / metadata, exact resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyv.engine.bundle import init_random_bundle, load_bundle, save_bundle
from hyv.training.lora.adapter import (
    ADAPTER_FORMAT,
    DEFAULT_TARGETS,
    LoRAAdapter,
    adapted_forward,
    merged_copy,
    read_adapter,
    resolve_targets,
    save_adapter,
)
from hyv.training.lora.config import BOUNCING_TRIGGER, LoRATrainConfig
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


def test_training_forward_equals_the_merged_weights_and_leaves_the_dit_alone(
    base_dir: Path, tmp_path: Path
) -> None:
    dit = load_bundle(base_dir).dit.eval()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    adapter = _random_adapter(dit)
    path = save_adapter(adapter, tmp_path / "a.safetensors", {"base_model": "tiny"})
    loaded = read_adapter(path)
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
        merged = merged_copy(dit, loaded, 1.0)(x, t, text, mask, pooled, guidance)
        half = merged_copy(dit, loaded, 0.5)(x, t, text, mask, pooled, guidance)
        zero = merged_copy(dit, loaded, 0.0)
        after = dit(x, t, text, mask, pooled, guidance)
    assert (hooked - base).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(hooked, merged, atol=1e-6)
    assert not torch.allclose(half, merged, atol=1e-4)
    assert torch.equal(after, base)  # the DiT was never written to
    for name, value in dit.state_dict().items():
        assert torch.equal(value, before[name]), name
        assert torch.equal(zero.state_dict()[name], before[name]), name  # scale 0: the base weights


def test_read_adapter_refuses_bad_files(base_dir: Path, tmp_path: Path) -> None:
    dit = load_bundle(base_dir).dit
    good = read_adapter(save_adapter(_random_adapter(dit), tmp_path / "good.safetensors", {}))
    a, b, _ = good.layers["double_blocks.0.img_attn_qkv"]
    key = "double_blocks.0.img_attn_qkv"
    names = {"a": f"{key}.lora_A.weight", "b": f"{key}.lora_B.weight", "alpha": f"{key}.alpha"}
    alpha = torch.tensor(8.0)
    cases = {
        "nan": ({names["a"]: a * float("nan"), names["b"]: b, names["alpha"]: alpha}, "NaN"),
        "no_b": ({names["a"]: a, names["alpha"]: alpha}, "lacks its lora_B"),
        "ranks": ({names["a"]: a, names["b"]: b[:, :2], names["alpha"]: alpha}, "expected A"),
        "extra": (
            {names["a"]: a, names["b"]: b, names["alpha"]: alpha, "x.weight": a.clone()},
            "unexpected tensor",
        ),
    }
    for name, (tensors, problem) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": ADAPTER_FORMAT}
        )
        with pytest.raises(ValueError, match=problem):
            read_adapter(path)
    save_file({f"{key}.lora_A.weight": a.contiguous()}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="is not a hyv-lora adapter"):
        read_adapter(tmp_path / "plain.safetensors")
    wrong = LoRAAdapter({key: (7, int(a.shape[1]))}, 4, 4.0)
    path = save_adapter(wrong, tmp_path / "wrong.safetensors", {})
    with pytest.raises(ValueError, match="is 7x"):
        merged_copy(dit, read_adapter(path))


def test_training_writes_the_native_file(base_dir: Path, tmp_path: Path) -> None:
    config = _config(base_dir, tmp_path / "run", output=tmp_path / "loras" / "bouncing.safetensors")
    trainer = LoRATrainer(config)
    base_weights = {k: v.clone() for k, v in trainer.dit.state_dict().items()}
    path = trainer.train()
    assert path == config.output and path.is_file()
    assert len(trainer.history) == 6 and all(loss > 0 for loss in trainer.history)
    for name, value in trainer.dit.state_dict().items():  # the base stays frozen
        assert torch.equal(value, base_weights[name]), name
    adapter = read_adapter(path)
    modules = resolve_targets(trainer.dit, DEFAULT_TARGETS)
    assert sorted(adapter.layers) == sorted(modules)
    shapes = {name: tuple(m.weight.shape) for name, m in trainer.dit.named_modules() if name in modules}
    for name, (a, b, alpha) in adapter.layers.items():
        out_features, in_features = shapes[name]
        assert tuple(a.shape) == (4, in_features) and tuple(b.shape) == (out_features, 4) and alpha == 8.0
        assert b.abs().max() > 0  # trained away from its zero init
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
    a, b = read_adapter(full.config.adapter_path), read_adapter(resumed.config.adapter_path)
    for name, (a_a, b_a, _) in a.layers.items():
        assert torch.equal(a_a, b.layers[name][0]) and torch.equal(b_a, b.layers[name][1]), name


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
    adapter = read_adapter(Path(line["adapter"]))
    assert sorted(adapter.layers) == [f"single_blocks.{i}.linear1" for i in range(len(adapter.layers))]
    assert adapter.rank == 2
    bad = CliRunner().invoke(app, [*args, "--targets", "nope.*"])
    assert bad.exit_code != 0 and "matches no Linear" in bad.output


def test_prior_preservation_rows_come_from_the_base_data(base_dir: Path, tmp_path: Path) -> None:
    config = _config(base_dir, tmp_path / "p", batch_size=4, prior_fraction=0.5, prior_videos=6, steps=2)
    trainer = LoRATrainer(config)
    assert trainer.prior is not None and trainer.prior_rows == 2
    assert len(trainer.prior.captions) == 6 and all("bouncing" not in c for c in trainer.prior.captions)
    assert all("bouncing" in c for c in trainer.clips.captions)
    path = trainer.train()
    assert read_adapter(path).metadata["prior_fraction"] == "0.5"
    with pytest.raises(ValueError, match="prior_fraction"):
        _config(base_dir, tmp_path, batch_size=1, prior_fraction=0.3)
