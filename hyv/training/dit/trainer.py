"""The DiT training loop: flow matching on VAE latents, with the same hyv/models/ code that serves.

One step, per process:

    video (B, 3, T, H, W) --frozen VAE--> x0 = to_dit_latents(posterior sample)   (B, 16, t, h, w)
        (x scaling_factor, or per channel (z - mean) / std with latent_norm="per_channel")
    sigma ~ logit-normal or uniform, then HunyuanVideo's shift (for all but unshifted_fraction)
    noise ~ N(0, I)
    x_t = (1 - sigma) x0 + sigma noise;  target = noise - x0          (the velocity, as sampled)
    latent_concat DiT: input = [x_t, image latent (16), mask (1)]; for an I2V sample (probability
        i2v_fraction, videos only) the image latent is the posterior mean of latent frame 0, mapped
        the same way, and the mask is 1 there, exactly what the pipeline feeds for an input image;
        otherwise both are zero (T2V)
    caption -> "" with probability text_dropout (the unconditional prompt of CFG)
    loss = MSE(DiT(input, 1000 sigma, text, guidance 1000 x g), target); AdamW; grad clipping; EMA

bf16 autocast on CUDA (fp32 master weights); DDP when torch.distributed runs with several processes
(torchrun: the process group is created from the environment if nobody did). Everything random in a
step comes from generators seeded by (seed, step, rank), so `resume` replays the run exactly.
At the end the EMA weights are written as a bundle (`out_dir/bundle`) that `VideoPipeline.from_dir`
serves, with `trained=True` in its spec.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hyv.engine.bundle import BundleSpec, ModelBundle, init_random_bundle, load_bundle, save_bundle
from hyv.engine.sampling import shift_sigmas
from hyv.models import (
    BuiltinTextEncoder,
    CausalVAE3D,
    DiagonalGaussian,
    HunyuanVideoDiT,
    TextEmbeddings,
    TextEncoder,
    load_text_encoder,
    load_vae,
    to_dit_latents,
)
from hyv.training.core import StepCallback, Trainer, decay_param_groups, init_distributed, process_device
from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import BatchSource, SyntheticBatches, TrainBatch, step_seed
from hyv.training.dit.latents import (
    CACHE_FILE,
    CachedLatentBatches,
    LatentCache,
    build_latent_cache,
    channel_stats,
    encoded_channel_stats,
)
from hyv.training.state import EMA, lr_at

logger = logging.getLogger(__name__)

BUNDLE_SUBDIR = "bundle"


class FlowModel(nn.Module):
    """What is trained: the DiT and, when trained jointly, the built-in text encoder."""

    def __init__(self, dit: HunyuanVideoDiT, text_encoder: BuiltinTextEncoder | None) -> None:
        super().__init__()
        self.dit = dit
        self.text_encoder = text_encoder

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: list[str] | TextEmbeddings,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        if not isinstance(text, TextEmbeddings):
            if self.text_encoder is None:
                raise ValueError("captions given, but this model has no trainable text encoder")
            text = self.text_encoder.encode(text)
        return self.dit(x, timestep, text.states, text.mask, text.pooled, guidance)  # type: ignore[no-any-return]


def build_bundle(config: DiTTrainConfig) -> ModelBundle:
    """The starting bundle in fp32 on the CPU: a preset with a fresh training init, or `init_from`."""
    if config.init_from is not None:
        bundle = load_bundle(
            config.init_from, dtype=torch.float32, text_encoder_path=config.text_encoder_path
        )
    else:
        bundle = init_random_bundle(config.bundle, seed=config.seed)
        dit_config = bundle.dit.config.replace(image_condition=config.image_condition)
        torch.manual_seed(config.seed)
        dit = HunyuanVideoDiT(dit_config)
        dit.init_weights()  # adaLN-Zero: starts as the identity, predicting zero velocity
        if dit.guidance_in is not None and config.freeze_guidance_embed:
            out_layer = dit.guidance_in.mlp[-1]
            assert isinstance(out_layer, nn.Linear)
            nn.init.zeros_(out_layer.weight)  # contributes exactly 0 until distillation
            nn.init.zeros_(out_layer.bias)
        bundle.dit = dit
        if config.text_encoder_path is not None:
            bundle.text_encoder = load_text_encoder(config.text_encoder_path, dtype=torch.float32)
    if config.vae_path is not None:
        bundle.vae = load_vae(config.vae_path, dtype=torch.float32)
    dit_config = bundle.dit.config
    if dit_config.image_condition is None and config.i2v_fraction > 0:
        raise ValueError(
            f"DiTTrainConfig.i2v_fraction={config.i2v_fraction} needs a latent_concat DiT, "
            "but the DiT to train is text-to-video only; set i2v_fraction=0"
        )
    encoder = bundle.text_encoder
    if encoder is None:
        raise ValueError("the bundle has no text encoder: set DiTTrainConfig.text_encoder_path")
    if (encoder.text_dim, encoder.pooled_dim) != (dit_config.text_dim, dit_config.pooled_dim):
        raise ValueError(
            f"text encoder widths {(encoder.text_dim, encoder.pooled_dim)} do not match the DiT's "
            f"{(dit_config.text_dim, dit_config.pooled_dim)}"
        )
    if bundle.vae.config.latent_channels != dit_config.latent_channels:
        raise ValueError(
            f"VAE latent channels {bundle.vae.config.latent_channels} != DiT {dit_config.latent_channels}"
        )
    return bundle


class DiTTrainer(Trainer[DiTTrainConfig, float]):
    progress_label = "dit"

    def __init__(self, config: DiTTrainConfig, batches: BatchSource | None = None) -> None:
        config.validate()
        rank, world, local_rank = init_distributed()
        super().__init__(config, rank, world)
        self.device = process_device(config.device, local_rank)
        self.use_bf16 = self.device.type == "cuda" and config.mixed_precision == "bf16"

        bundle = build_bundle(config)
        self.spec: BundleSpec = bundle.spec
        self.flow_shift = (
            config.flow_shift if config.flow_shift is not None else bundle.spec.limits.flow_shift
        )
        self.vae: CausalVAE3D = bundle.vae.to(self.device).eval().requires_grad_(False)
        encoder = bundle.text_encoder
        assert encoder is not None  # checked by build_bundle
        trained_encoder = encoder if isinstance(encoder, BuiltinTextEncoder) else None
        if not config.train_text_encoder:
            trained_encoder = None
        self.frozen_text_encoder: TextEncoder | None = None
        if trained_encoder is None:
            self.frozen_text_encoder = encoder.to(device=self.device)
            if isinstance(encoder, nn.Module):
                encoder.eval().requires_grad_(False)
        dit = bundle.dit
        dit.gradient_checkpointing = config.gradient_checkpointing
        if dit.guidance_in is not None and config.freeze_guidance_embed:
            dit.guidance_in.requires_grad_(False)
        self.model: FlowModel = FlowModel(dit, trained_encoder).to(self.device).train()
        self.trained = self.model
        self.ema = EMA(self.model, config.ema_decay)
        self.ema_model: FlowModel = self.ema.model  # type: ignore[assignment]
        self.optimizer = torch.optim.AdamW(
            decay_param_groups(self.model, config.weight_decay), lr=config.lr, betas=config.betas
        )
        cache: LatentCache | None = None
        if batches is None and config.cache_videos > 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            name = CACHE_FILE if self.world == 1 else f"rank{self.rank}_{CACHE_FILE}"  # no write races
            cache = build_latent_cache(
                self.vae, config, self.out_dir / name, self.device, config.progress and self.rank == 0
            )
            batches = CachedLatentBatches(config, cache)
        self.batches: BatchSource = batches if batches is not None else SyntheticBatches(config)
        if config.latent_norm == "per_channel" and self.vae.config.latents_mean is None:
            self._set_latent_stats(cache)
        if config.resume:
            self.resume()
        self.ddp_model: nn.Module = self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)

    def _set_latent_stats(self, cache: LatentCache | None) -> None:
        """Measure per-channel latent statistics and store them in the (frozen) VAE's config."""
        c = self.config
        channels = self.vae.config.latent_channels
        if cache is not None:
            first = cache.moments[c.train_buckets()[0]]  # the first video bucket's clips
            means = first[: c.latent_stats_clips, :channels].float()  # (N, C, t, h, w)
            mean, std = channel_stats(means)
        else:
            mean, std = encoded_channel_stats(self.vae, c, self.device)
        self.vae.config = self.vae.config.replace(latents_mean=mean, latents_std=std)
        logger.info(
            "per-channel latent statistics: std %.3f..%.3f, |mean| <= %.3f",
            min(std),
            max(std),
            max(abs(m) for m in mean),
        )

    def _autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast (fp32 master weights) when `use_bf16`, i.e. on CUDA unless disabled."""
        if self.use_bf16:
            return torch.autocast(self.device.type, torch.bfloat16)
        return nullcontext()

    # --- one step ---------------------------------------------------------------------------------

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.timestep_sampling == "logit_normal":
            normal = torch.randn(n, generator=generator, device=self.device)
            u = torch.sigmoid(normal * c.logit_std + c.logit_mean)
        else:
            u = torch.rand(n, generator=generator, device=self.device)
        if self.flow_shift == 1.0:
            return u
        shifted = shift_sigmas(u, self.flow_shift)
        if c.unshifted_fraction == 0.0:
            return shifted
        # A mixture: the shift keeps the high noise levels (where motion words bind) well trained,
        # the unshifted share trains the low ones (outlines, clean backgrounds) that a shift of 5
        # leaves to ~0.7% of the samples.
        keep = torch.rand(n, generator=generator, device=self.device) < c.unshifted_fraction
        return torch.where(keep, u, shifted)

    def prepare(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, Any]:
        """Model inputs and the velocity target of one batch (no gradients through the VAE)."""
        c = self.config
        dit_config = self.model.dit.config
        if batch.moments is not None:  # from the latent cache: the encoder already ran
            posterior = DiagonalGaussian(batch.moments.to(self.device, torch.float32))
        else:
            assert batch.video is not None  # TrainBatch holds one of the two
            with torch.no_grad(), self._autocast():
                posterior = self.vae.encode(batch.video.to(self.device), tiled=False)
        x0 = to_dit_latents(posterior.sample(generator).float(), self.vae.config)  # (B, C, t, h, w)
        b, channels, frames = x0.shape[:3]
        sigma = self.sample_sigmas(b, generator)  # (B,)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        s = sigma.view(b, 1, 1, 1, 1)
        x_in = (1.0 - s) * x0 + s * noise
        if dit_config.image_condition == "latent_concat":
            cond = torch.zeros(b, channels + 1, *x0.shape[2:], device=self.device)
            i2v = torch.rand(b, generator=generator, device=self.device) < c.i2v_fraction
            i2v |= batch.image_conditioned
            if frames > 1:  # for an image the "first frame" is the whole target: no I2V
                cond[:, :channels, :1] = to_dit_latents(posterior.mode().float()[:, :, :1], self.vae.config)
                cond[:, channels:, :1] = 1.0
                cond = cond * i2v.view(b, 1, 1, 1, 1)
            x_in = torch.cat([x_in, cond], dim=1)  # (B, 2C + 1, t, h, w)
        drop = (torch.rand(b, generator=generator, device=self.device) < c.text_dropout).tolist()
        captions = ["" if dropped else caption for dropped, caption in zip(drop, batch.captions, strict=True)]
        text: list[str] | TextEmbeddings = captions
        if self.frozen_text_encoder is not None:
            with torch.no_grad():
                text = self.frozen_text_encoder.encode(captions).to(self.device, torch.float32)
        guidance = None
        if dit_config.guidance_embed:
            guidance = torch.full((b,), c.guidance * 1000.0, device=self.device)
        return {
            "x": x_in,
            "timestep": sigma * 1000.0,
            "text": text,
            "guidance": guidance,
            "target": noise - x0,
        }

    def train_step(self, step: int) -> float:
        c = self.config
        self.set_lr(lr_at(step, c.lr, c.warmup_steps, c.lr_schedule, c.steps))
        generator = torch.Generator(device=self.device).manual_seed(step_seed(c.seed, step, self.rank))
        inputs = self.prepare(self.batches.batch(step, self.rank), generator)
        target = inputs.pop("target")
        with self._autocast():
            prediction = self.ddp_model(**inputs)
        loss = F.mse_loss(prediction.float(), target)
        self.optimize(loss)
        return self.mean_over_ranks(loss)

    # --- the loop (hyv/training/core.py) ---------------------------------------------------------

    @property
    def losses(self) -> list[float]:
        """The loss of every step so far (the core's metrics history)."""
        return self.history

    def run_step(self, step: int) -> float:
        return self.train_step(step)

    def export(self) -> Path:
        return self.export_bundle()

    def export_bundle(self, directory: Path | None = None) -> Path:
        """Write the EMA weights (DiT, and the text encoder if trained) as a served bundle."""
        directory = directory or self.out_dir / BUNDLE_SUBDIR
        if self.rank == 0:
            ema = self.ema_model
            text_encoder = ema.text_encoder if ema.text_encoder is not None else self.frozen_text_encoder
            bundle = ModelBundle(
                self.spec.with_trained_dit(),
                ema.dit,
                self.vae,
                text_encoder,
            )
            save_bundle(bundle, directory)
        self.barrier()
        return directory


def train_dit(
    config: DiTTrainConfig, batches: BatchSource | None = None, on_step: StepCallback | None = None
) -> Path:
    """Train (or, with `config.resume`, continue training) the DiT; returns the bundle directory."""
    return DiTTrainer(config, batches).train(on_step)
