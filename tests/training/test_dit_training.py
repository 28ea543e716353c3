"""DiT training (hyv/training/dit) on the tiny bundle at 32x32x5: the exported bundle serves T2V and
I2V, a fixed batch is overfitted, resume replays an interrupted run exactly, and the step's inputs
(I2V condition, text dropout, guidance) are what the pipeline feeds at inference."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from hyv.engine.pipeline import PipelineOptions, VideoPipeline
from hyv.engine.request import GenerationRequest
from hyv.engine.video_io import read_mp4
from hyv.models import load_dit, load_text_encoder, to_dit_latents
from hyv.training.data.buckets import Bucket
from hyv.training.data.dataset import SyntheticVideoDataset
from hyv.training.dit import (
    DiTTrainConfig,
    DiTTrainer,
    FixedBatch,
    SyntheticBatches,
    latents,
    list_checkpoints,
    train_dit,
)

SIZE, FRAMES = 32, 5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # CPU results (and the resume comparison) independent of the machine


def _config(out_dir: Path, **changes: object) -> DiTTrainConfig:
    base: dict[str, object] = dict(
        out_dir=out_dir,
        bundle="tiny",
        steps=4,
        batch_size=2,
        num_frames=FRAMES,
        size=SIZE,
        lr=3e-3,
        warmup_steps=2,
        checkpoint_every=100,
        ema_decay=0.99,
        dataset_length=64,
        progress=False,
    )
    base.update(changes)
    return DiTTrainConfig(**base)  # type: ignore[arg-type]


def _fixed_batch(n: int = 2) -> FixedBatch:
    dataset = SyntheticVideoDataset("train", num_frames=FRAMES, size=SIZE, image_fraction=0.0, length=16)
    items = [dataset[i] for i in range(n)]
    return FixedBatch(torch.stack([item["video"] for item in items]), [item["caption"] for item in items])


def _png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiTTrainer, Path]:
    out = tmp_path_factory.mktemp("dit_run")
    config = _config(out, steps=5, checkpoint_every=2, image_fraction=0.5, keep_checkpoints=2)
    trainer = DiTTrainer(config)
    bundle_dir = trainer.train()
    return trainer, bundle_dir


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_frames", 6),
        ("size", 40),
        ("lr", 0.0),
        ("text_dropout", 1.5),
        ("i2v_fraction", -0.1),
        ("bucket_balance", 1.5),
        ("ema_decay", 1.0),
        ("timestep_sampling", "cosmic"),
        ("steps", 0),
        ("mixed_precision", "fp8"),
    ],
)
def test_config_rejects_bad_fields_by_name(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **{field: value})


def test_config_round_trips_through_a_dict(tmp_path: Path) -> None:
    config = _config(tmp_path, flow_shift=3.0)
    assert DiTTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --- data -------------------------------------------------------------------------------------------


def test_synthetic_batches_are_a_function_of_the_step(tmp_path: Path) -> None:
    batches = SyntheticBatches(_config(tmp_path, image_fraction=0.5))
    shapes = {tuple(batches.batch(step).video.shape) for step in range(12)}
    assert shapes == {(2, 3, FRAMES, SIZE, SIZE), (2, 3, 1, SIZE, SIZE)}  # joint image + video
    first, again, other_rank = batches.batch(3), batches.batch(3), batches.batch(3, rank=1)
    assert torch.equal(first.video, again.video) and first.captions == again.captions
    assert not torch.equal(first.video, other_rank.video) or first.captions != other_rank.captions


# --- one step's inputs ------------------------------------------------------------------------------


def test_step_inputs_i2v_condition_text_dropout_and_guidance(tmp_path: Path) -> None:
    trainer = DiTTrainer(_config(tmp_path, i2v_fraction=1.0, text_dropout=1.0), batches=_fixed_batch())
    assert trainer.model.dit.config.in_channels == 33  # the tiny preset switched to latent_concat
    batch = trainer.batches.batch(0)
    generator = torch.Generator().manual_seed(0)
    inputs = trainer.prepare(batch, generator)
    x = inputs["x"]
    assert x.shape == (2, 33, 2, SIZE // 8, SIZE // 8)
    mean = trainer.vae.encode(batch.video, tiled=False).mode() * trainer.vae.config.scaling_factor
    torch.testing.assert_close(x[:, 16:32, :1], mean[:, :, :1])  # image latent in frame 0 ...
    assert torch.all(x[:, 16:32, 1:] == 0) and torch.all(x[:, 32, 0] == 1) and torch.all(x[:, 32, 1:] == 0)
    assert trainer.frozen_text_encoder is not None  # the default: the built-in encoder is frozen
    with torch.no_grad():
        unconditional = trainer.frozen_text_encoder.encode(["", ""])
    # dropped captions are the unconditional prompt, encoded once by the frozen encoder
    torch.testing.assert_close(inputs["text"].states, unconditional.states)
    torch.testing.assert_close(inputs["text"].pooled, unconditional.pooled)
    assert torch.all(inputs["guidance"] == 1000.0)
    assert torch.all((inputs["timestep"] > 0) & (inputs["timestep"] < 1000))

    trainer.config.i2v_fraction, trainer.config.text_dropout = 0.0, 0.0
    inputs = trainer.prepare(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditional = trainer.frozen_text_encoder.encode(batch.captions)
    assert torch.all(inputs["x"][:, 16:] == 0)  # plain T2V
    torch.testing.assert_close(inputs["text"].pooled, conditional.pooled)


# --- the overfit check ------------------------------------------------------------------------------


def test_loss_goes_down_on_a_fixed_batch(tmp_path: Path) -> None:
    losses: list[float] = []
    config = _config(
        tmp_path, steps=30, warmup_steps=0, text_dropout=0.0, i2v_fraction=0.5, checkpoint_every=30
    )
    train_dit(config, batches=_fixed_batch(), on_step=lambda step, loss: losses.append(loss))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"overfit: first-5 mean {first:.4f}, last-5 mean {last:.4f}, ratio {first / last:.2f}")
    assert last < 0.8 * first, losses


# --- the run: checkpoints, plot, EMA, exported bundle -------------------------------------------------


def test_run_writes_checkpoints_plot_and_a_trained_bundle(trained: tuple[DiTTrainer, Path]) -> None:
    trainer, bundle_dir = trained
    out = trainer.config.out_dir
    assert [step for step, _ in list_checkpoints(out)] == [4, 5]  # every 2 and at the end, newest 2 kept
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 5
    spec = json.loads((out / "bundle" / "bundle.json").read_text())
    assert spec["trained"] is True and str(bundle_dir) == str(out / "bundle")


def test_ema_differs_from_raw_weights_and_is_what_is_exported(trained: tuple[DiTTrainer, Path]) -> None:
    trainer, bundle_dir = trained
    raw, ema = trainer.model.dit.state_dict(), trainer.ema_model.dit.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    loaded = load_dit(bundle_dir / "dit").state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    assert trainer.model.dit.config.image_condition == "latent_concat"


def test_frozen_guidance_embedding_contributes_nothing(trained: tuple[DiTTrainer, Path]) -> None:
    trainer = trained[0]
    dit = trainer.ema_model.dit
    raw_guidance_in = trainer.model.dit.guidance_in
    assert dit.guidance_in is not None and raw_guidance_in is not None
    assert not any(p.requires_grad for p in raw_guidance_in.parameters())
    out = dit.guidance_in(torch.tensor([1000.0, 6000.0]))
    assert torch.all(out == 0)  # any guidance the pipeline sends is ignored until distillation


def test_exported_bundle_generates_t2v_and_i2v(trained: tuple[DiTTrainer, Path]) -> None:
    _, bundle_dir = trained
    pipeline = VideoPipeline.from_dir(bundle_dir, PipelineOptions())
    prompt = "a red circle moving left on a black background"
    for image in (None, _png(SIZE)):
        request = GenerationRequest(
            prompt=prompt, image=image, width=SIZE, height=SIZE, num_frames=FRAMES, steps=2, seed=0
        )
        frames = read_mp4(pipeline.generate(request).mp4)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)


# --- resume -----------------------------------------------------------------------------------------


class _KilledError(Exception):
    pass


def test_resume_after_a_kill_replays_the_uninterrupted_run(tmp_path: Path) -> None:
    common = dict(steps=6, checkpoint_every=3, image_fraction=0.5, i2v_fraction=0.5)
    straight = DiTTrainer(_config(tmp_path / "straight", **common))
    straight.train()

    def kill_after_step_4(step: int, loss: float) -> None:
        if step == 4:  # step 4 is done but not checkpointed: its work is lost, as in a real kill
            raise _KilledError

    interrupted = _config(tmp_path / "interrupted", **common)
    with pytest.raises(_KilledError):
        train_dit(interrupted, on_step=kill_after_step_4)
    assert [step for step, _ in list_checkpoints(interrupted.out_dir)] == [3]

    resumed = DiTTrainer(interrupted.replace(resume=True))
    assert resumed.step == 3 and len(resumed.losses) == 3
    resumed.train()
    assert resumed.losses == straight.losses
    for mine, theirs in ((resumed.model, straight.model), (resumed.ema_model, straight.ema_model)):
        expected = theirs.state_dict()
        for key, value in mine.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)


def test_bf16_autocast_step_runs_with_fp32_master_weights(tmp_path: Path) -> None:
    # On CUDA `mixed_precision="bf16"` turns this on; forcing it here runs the same autocast code on CPU.
    trainer = DiTTrainer(_config(tmp_path, i2v_fraction=0.5), batches=_fixed_batch())
    assert not trainer.use_bf16  # never on CPU by default
    trainer.use_bf16 = True
    losses = [trainer.train_step(step) for step in range(2)]
    assert all(0.0 < loss < 10.0 for loss in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fine_tune_from_a_bundle_with_a_frozen_text_encoder(
    trained: tuple[DiTTrainer, Path], tmp_path: Path
) -> None:
    _, trained_dir = trained
    bundle_dir = shutil.copytree(trained_dir, tmp_path / "start")
    spec = json.loads((bundle_dir / "bundle.json").read_text())
    spec["step_cache_coefficients"] = [1.0, -2.0, 3.0]  # fitted on the starting DiT
    (bundle_dir / "bundle.json").write_text(json.dumps(spec))
    config = _config(tmp_path, init_from=bundle_dir, train_text_encoder=False, steps=2)
    trainer = DiTTrainer(config, batches=_fixed_batch())
    assert trainer.model.text_encoder is None and trainer.frozen_text_encoder is not None
    before = {k: v.clone() for k, v in trainer.frozen_text_encoder.state_dict().items()}  # type: ignore[attr-defined]
    out = trainer.train()
    after = trainer.frozen_text_encoder.state_dict()  # type: ignore[attr-defined]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "text_encoder" / "model.safetensors").is_file()
    assert json.loads((out / "bundle.json").read_text())["step_cache_coefficients"] is None


def test_joint_text_encoder_training_updates_and_exports_the_encoder(tmp_path: Path) -> None:
    config = _config(tmp_path, train_text_encoder=True, steps=3)
    trainer = DiTTrainer(config, batches=_fixed_batch())
    assert trainer.frozen_text_encoder is None and trainer.model.text_encoder is not None
    before = {k: v.clone() for k, v in trainer.model.text_encoder.state_dict().items()}
    out = trainer.train()
    exported = load_text_encoder(out / "text_encoder", dtype=torch.float32).state_dict()
    changed = [k for k in before if not torch.equal(before[k], exported[k].to(before[k].dtype))]
    assert changed, "jointly trained text encoder did not change"


# --- the latent cache -------------------------------------------------------------------------------


def test_latent_cache_matches_the_encoder_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hyv.training.dit.latents import CACHE_FILE, CachedLatentBatches, build_latent_cache

    config = _config(tmp_path, cache_videos=5, cache_images=3, image_fraction=0.5)
    trainer = DiTTrainer(config)
    assert isinstance(trainer.batches, CachedLatentBatches)
    cache = trainer.batches.cache
    video, image = Bucket(SIZE, SIZE, FRAMES), Bucket(SIZE, SIZE, 1)
    assert cache.buckets == (video, image)
    assert cache.moments[video].shape == (5, 32, 2, SIZE // 8, SIZE // 8)
    assert cache.moments[image].shape == (3, 32, 1, SIZE // 8, SIZE // 8)
    videos = SyntheticVideoDataset("train", num_frames=FRAMES, size=SIZE, image_fraction=0.0, length=64)
    item = videos[4]
    expected = trainer.vae.encode(item["video"][None].float(), tiled=False).moments
    torch.testing.assert_close(cache.moments[video][4:5].float(), expected, atol=2e-3, rtol=2e-3)  # fp16
    assert cache.captions[video][4] == item["caption"]
    kinds = {trainer.batches.batch(step).moments.shape[2] for step in range(12)}  # type: ignore[union-attr]
    assert kinds == {1, 2}  # joint image + latent-video batches
    # A bigger cache reuses the saved chunks; a different VAE invalidates them.
    bigger = build_latent_cache(
        trainer.vae, config.replace(cache_videos=7), tmp_path / CACHE_FILE, trainer.device
    )
    torch.testing.assert_close(bigger.moments[video][:5], cache.moments[video])
    losses = [trainer.train_step(step) for step in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    # A decoder fine-tune leaves the latents as they are: the cache is reused, not re-encoded.
    written = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    with torch.no_grad():
        next(trainer.vae.decoder.parameters()).add_(1.0)
    build_latent_cache(trainer.vae, config, tmp_path / CACHE_FILE, trainer.device, progress=False)
    assert (tmp_path / CACHE_FILE).stat().st_mtime_ns == written
    with torch.no_grad():
        next(trainer.vae.encoder.parameters()).add_(1.0)
    rebuilt = build_latent_cache(trainer.vae, config, tmp_path / CACHE_FILE, trainer.device, progress=False)
    assert not torch.equal(rebuilt.moments[video], cache.moments[video])
    # Clips drawn by another version of the data sampler are not the ones the cache holds.
    written = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    monkeypatch.setattr(latents, "DATA_VERSION", latents.DATA_VERSION + 1)
    build_latent_cache(trainer.vae, config, tmp_path / CACHE_FILE, trainer.device, progress=False)
    assert (tmp_path / CACHE_FILE).stat().st_mtime_ns != written
    # A cache path in a run directory nothing created yet (a later stage reusing a skipped one's).
    elsewhere = tmp_path / "never_run" / CACHE_FILE
    built = build_latent_cache(trainer.vae, config, elsewhere, trainer.device, progress=False)
    assert elsewhere.is_file() and torch.equal(built.moments[video], rebuilt.moments[video])


def test_buckets_each_batch_one_shape_sized_by_the_token_budget(tmp_path: Path) -> None:
    """Several aspect and length buckets: every bucket is drawn, a batch holds one shape, its size
    follows the token budget, and the cache is keyed by bucket (a new bucket list rebuilds it)."""
    from hyv.training.dit.latents import CACHE_FILE, CachedLatentBatches, build_latent_cache

    buckets = ("32x32x5", "48x32x5", "32x48x9", "32x32x1")
    config = _config(
        tmp_path,
        buckets=buckets,
        token_budget=24,
        batch_size=8,
        cache_videos=4,
        cache_images=4,
        image_fraction=0.25,
    )
    trainer = DiTTrainer(config)
    assert isinstance(trainer.batches, CachedLatentBatches)
    shapes: dict[tuple[int, ...], int] = {}
    for step in range(60):
        moments = trainer.batches.batch(step).moments
        assert moments is not None
        shapes[tuple(moments.shape[2:])] = moments.shape[0]
    # (t, h, w) latents -> clips per batch: tokens are t * h/2 * w/2 (2x2 patches): 8, 12, 18 and 4
    # per clip, so 24 // tokens = 3, 2, 1 and 6 clips (at most batch_size 8)
    assert shapes == {(2, 4, 4): 3, (2, 4, 6): 2, (3, 6, 4): 1, (1, 4, 4): 6}
    assert [trainer.train_step(step) for step in range(4)]  # every shape trains
    fewer = build_latent_cache(
        trainer.vae,
        config.replace(buckets=buckets[:1] + buckets[3:]),
        tmp_path / CACHE_FILE,
        trainer.device,
        progress=False,
    )
    assert fewer.buckets == (Bucket(32, 32, 5), Bucket(32, 32, 1))
    rendered = SyntheticBatches(config)
    assert {tuple(rendered.batch(step).video.shape[1:]) for step in range(40)} == {  # type: ignore[union-attr]
        (3, 5, 32, 32),
        (3, 5, 32, 48),
        (3, 9, 48, 32),
        (3, 1, 32, 32),
    }


# --- latent normalization and the timestep mixture ---------------------------------------------------


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, everything else)
    return flat.mean(dim=1), flat.std(dim=1)


@pytest.mark.parametrize("cached", [True, False])
def test_per_channel_latent_norm_standardizes_and_travels_with_the_bundle(
    tmp_path: Path, cached: bool
) -> None:
    changes: dict[str, object] = dict(latent_norm="per_channel", latent_stats_clips=8, image_fraction=0.0)
    if cached:
        changes.update(cache_videos=8, cache_images=0)
    trainer = DiTTrainer(_config(tmp_path, **changes))
    vae_config = trainer.vae.config
    assert vae_config.latents_mean is not None and vae_config.latents_std is not None
    videos = SyntheticVideoDataset("train", num_frames=FRAMES, size=SIZE, image_fraction=0.0, length=64)
    clips = torch.stack([videos[i]["video"] for i in range(8)])
    with torch.no_grad():
        z = trainer.vae.encode(clips, tiled=False).mode()
    mean, std = _channel_moments(z)
    tol = 2e-3 if cached else 1e-4  # the cache keeps fp16 moments
    torch.testing.assert_close(torch.tensor(vae_config.latents_mean), mean, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.tensor(vae_config.latents_std), std, atol=tol, rtol=tol)
    x = to_dit_latents(z, vae_config)
    x_mean, x_std = _channel_moments(x)
    assert x_mean.abs().max() < 1e-2 and (x_std - 1).abs().max() < 1e-2  # what the DiT is fed
    inputs = trainer.prepare(FixedBatch(clips[:2], ["a", "b"]).batch(0), torch.Generator().manual_seed(0))
    assert inputs["x"].shape[1] == 33
    # The exported bundle's VAE carries the statistics, so the engine decodes with the same map.
    bundle = trainer.export_bundle()
    loaded = VideoPipeline.from_dir(bundle, PipelineOptions()).vae.config
    assert loaded.latents_mean == pytest.approx(vae_config.latents_mean)
    assert loaded.latents_std == pytest.approx(vae_config.latents_std)


def test_global_latent_norm_leaves_the_vae_config_alone(tmp_path: Path) -> None:
    trainer = DiTTrainer(_config(tmp_path), batches=_fixed_batch())
    assert trainer.vae.config.latents_mean is None and trainer.vae.config.latents_std is None


def test_unshifted_fraction_mixes_shifted_and_plain_sigmas(tmp_path: Path) -> None:
    def sigmas(fraction: float) -> torch.Tensor:
        trainer = DiTTrainer(
            _config(tmp_path, flow_shift=5.0, unshifted_fraction=fraction), batches=_fixed_batch()
        )
        return trainer.sample_sigmas(20_000, torch.Generator().manual_seed(0))

    shifted, plain, mixed = sigmas(0.0), sigmas(1.0), sigmas(0.5)
    # logit-normal(0, 1): median 0.5 unshifted; a shift of 5 moves it to 5 * 0.5 / (1 + 4 * 0.5) = 0.83
    assert plain.median().item() == pytest.approx(0.5, abs=0.02)
    assert shifted.median().item() == pytest.approx(5 / 6, abs=0.02)
    low = {name: (s < 0.3).float().mean().item() for name, s in (("shifted", shifted), ("mixed", mixed))}
    assert low["shifted"] < 0.02 and 0.08 < low["mixed"] < 0.14  # half of plain's ~21% below 0.3
    assert mixed.min() > 0 and mixed.max() < 1


def test_mixture_and_latent_norm_fields_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unshifted_fraction"):
        _config(tmp_path, unshifted_fraction=1.5)
    with pytest.raises(ValueError, match="latent_norm"):
        _config(tmp_path, latent_norm="per_pixel")
    with pytest.raises(ValueError, match="latent_stats_clips"):
        _config(tmp_path, latent_stats_clips=0)


def test_continuation_steps_train_image_to_video_on_cached_continuation_clips(tmp_path: Path) -> None:
    """`continuation_fraction` of the video steps draw the cache's continuation clips and condition
    every row on its first frame; image steps never do; without continuations the stream of plain
    batches is what it was; changing their start times re-encodes those clips only."""
    from hyv.training.dit.latents import CACHE_FILE, CachedLatentBatches, build_latent_cache

    config = _config(
        tmp_path,
        cache_videos=3,
        cache_images=2,
        image_fraction=0.25,
        i2v_fraction=0.0,
        cache_continuations=4,
        continuation_fraction=0.5,
    )
    trainer = DiTTrainer(config)
    assert isinstance(trainer.batches, CachedLatentBatches)
    cache, video = trainer.batches.cache, Bucket(SIZE, SIZE, FRAMES)
    assert cache.continuation_moments[video].shape == (4, 32, 2, SIZE // 8, SIZE // 8)
    assert set(cache.continuation_moments) == {video}  # video buckets only
    clips = SyntheticVideoDataset(
        "train", num_frames=FRAMES, size=SIZE, image_fraction=0.0, length=64, continuation_starts=(0.4, 1.0)
    )
    expected = trainer.vae.encode(clips[2]["video"][None], tiled=False).moments
    torch.testing.assert_close(cache.continuation_moments[video][2:3].float(), expected, atol=2e-3, rtol=2e-3)
    assert cache.continuation_captions[video][2] == clips[2]["caption"]
    batches = [trainer.batches.batch(step) for step in range(40)]
    continuing = [b for b in batches if b.image_conditioned]
    assert 8 <= len(continuing) <= 25 and all(b.moments.shape[2] == 2 for b in continuing)  # type: ignore[union-attr]
    for b in continuing:  # each row is one of the continuation clips
        assert any(torch.equal(b.moments[0], m.float()) for m in cache.continuation_moments[video])  # type: ignore[index]
    inputs = trainer.prepare(continuing[0], torch.Generator().manual_seed(0))
    assert torch.all(inputs["x"][:, 32, 0] == 1) and torch.all(inputs["x"][:, 32, 1:] == 0)  # all I2V
    plain = next(b for b in batches if not b.image_conditioned and b.moments.shape[2] == 2)  # type: ignore[union-attr]
    assert torch.all(trainer.prepare(plain, torch.Generator().manual_seed(0))["x"][:, 16:] == 0)  # T2V
    assert all(torch.isfinite(torch.tensor([trainer.train_step(step) for step in range(3)])))
    without = CachedLatentBatches(config.replace(continuation_fraction=0.0), cache)
    for step in range(40):  # the plain batches draw the same clips as before continuations existed
        if not batches[step].image_conditioned:
            torch.testing.assert_close(without.batch(step).moments, batches[step].moments)
    moved = build_latent_cache(
        trainer.vae,
        config.replace(continuation_starts=(1.0, 1.0)),
        tmp_path / CACHE_FILE,
        trainer.device,
        False,
    )
    torch.testing.assert_close(moved.moments[video], cache.moments[video])
    assert not torch.equal(moved.continuation_moments[video], cache.continuation_moments[video])
    with pytest.raises(ValueError, match="cache_continuations"):
        config.replace(cache_continuations=0)
    with pytest.raises(ValueError, match="no continuation clips"):
        CachedLatentBatches(config, dataclasses.replace(cache, continuation_moments={}))
