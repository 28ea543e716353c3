"""`hyv train lora`'s trainer: LoRA on a bundle's DiT with the flow-matching loss, on the shared
resumable core (hyv/training/core.py).

One step:

    x0 = to_dit_latents(posterior sample of a cached bouncing clip)       (B, 16, t, h, w)
    sigma: uniform over the bundle's sampling sigmas (timestep_sampling="schedule": a 4-step
        student's four noise levels) or base training's shifted logit-normal draw
    x_t = (1 - sigma) x0 + sigma noise;  target = noise - x0
    loss = MSE(DiT with the adapter (x_t, 1000 sigma, caption, guidance 1000 g), target)

With `prior_fraction` > 0, that share of every batch are clips of the base model's own train split
(its captions: moving left, growing, ...) whose target is the frozen base DiT's prediction at the
same input (prior preservation): the adapter learns to draw a bounce for "bouncing" and to change
nothing for the captions the base model already follows.

The DiT, VAE and text encoder are frozen (the DiT is never written to: each forward runs it with
the adapted weights, hyv.training.lora.adapter.adapted_forward); only the adapter's A and B are
optimized (AdamW).
The image condition of a latent_concat DiT is all zeros (text-to-video). Everything random in a
step comes from generators seeded by (seed, step), so a resumed run replays the uninterrupted one
exactly. The exported adapter is the EMA of A and B (`ema_decay` 0: the last step's).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hyv.engine.bundle import load_bundle
from hyv.engine.pipeline import SCHEDULE_METADATA_KEY
from hyv.engine.sampling import flow_schedule, shift_sigmas
from hyv.models import DiagonalGaussian, TextEncoder, read_dit_metadata, to_dit_latents
from hyv.training.core import StepCallback, Trainer, process_device
from hyv.training.dit.data import step_rng, step_seed
from hyv.training.lora.adapter import LoRAAdapter, adapted_forward, save_adapter
from hyv.training.lora.config import BOUNCING_TRIGGER, LoRATrainConfig
from hyv.training.lora.data import ClipLatents, build_bouncing_cache
from hyv.training.state import EMA, lr_at

logger = logging.getLogger(__name__)


def sampling_sigmas(base: Path, steps: int, flow_shift: float) -> list[float]:
    """The sigmas a bundle samples at by default: its distilled schedule, else `steps` steps of the
    shifted flow schedule; the final 0 included."""
    metadata = read_dit_metadata(base / "dit")
    if SCHEDULE_METADATA_KEY in metadata:
        return [float(s) for s in json.loads(metadata[SCHEDULE_METADATA_KEY])]
    return [float(s) for s in flow_schedule(steps, flow_shift)]


class LoRATrainer(Trainer[LoRATrainConfig, float]):
    progress_label = "lora"
    plot_title = "LoRA flow-matching loss"

    def __init__(self, config: LoRATrainConfig) -> None:
        config.validate()
        super().__init__(config)  # one process: the adapter is small and the data cached
        self.device = process_device(config.device, 0)
        bundle = load_bundle(config.base, dtype=torch.float32)
        if bundle.text_encoder is None:
            raise ValueError(f"bundle {config.base} has no text encoder")
        self.spec = bundle.spec
        self.dit = bundle.dit.to(self.device).eval().requires_grad_(False)
        self.vae = bundle.vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder: TextEncoder = bundle.text_encoder.to(device=self.device)
        if isinstance(self.text_encoder, torch.nn.Module):
            self.text_encoder.eval().requires_grad_(False)
        limits = self.spec.limits
        self.sigmas = sampling_sigmas(config.base, limits.steps, limits.flow_shift)
        self.flow_shift = limits.flow_shift
        self.guidance = config.guidance if config.guidance is not None else limits.guidance
        self.train_levels = [s for s in self.sigmas if s > 0.0 and s >= config.min_sigma]
        if config.timestep_sampling == "schedule" and not self.train_levels:
            raise ValueError(
                f"LoRATrainConfig.min_sigma={config.min_sigma} leaves none of the sampling sigmas "
                f"{self.sigmas}"
            )

        self.adapter = LoRAAdapter.for_model(
            self.dit, config.targets, config.rank, config.alpha, seed=config.seed
        ).to(self.device)
        self.trained = self.adapter
        self.ema = EMA(self.adapter, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=config.lr, betas=config.betas, weight_decay=0.0
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clips: ClipLatents = build_bouncing_cache(self.vae, config, self.out_dir, self.device)
        self.prior_rows = round(config.batch_size * config.prior_fraction)
        self.prior: ClipLatents | None = None
        if self.prior_rows:
            self.prior = build_bouncing_cache(self.vae, config, self.out_dir, self.device, prior=True)
        logger.info(
            "LoRA rank %d, alpha %g on %d Linear modules (%d parameters); %d cached clips",
            config.rank,
            config.alpha,
            len(self.adapter.paths),
            sum(p.numel() for p in self.adapter.parameters()),
            len(self.clips.captions),
        )
        if config.resume:
            self.resume()

    # --- one step ---------------------------------------------------------------------------------

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.timestep_sampling == "schedule":
            levels = torch.tensor(self.train_levels, dtype=torch.float32, device=self.device)
            pick = torch.randint(0, len(levels), (n,), generator=generator, device=self.device)
            return levels[pick]
        normal = torch.randn(n, generator=generator, device=self.device)
        u = torch.sigmoid(normal * c.logit_std + c.logit_mean)
        sigma = shift_sigmas(u, self.flow_shift) if self.flow_shift != 1.0 else u
        return c.min_sigma + (1.0 - c.min_sigma) * sigma

    def loss(self, step: int) -> torch.Tensor:
        c = self.config
        generator = torch.Generator(device=self.device).manual_seed(step_seed(c.seed, step, 0))
        rng = step_rng(c.seed, step, 0, stream=1)
        own = c.batch_size - self.prior_rows
        indices = rng.integers(0, len(self.clips.captions), own)
        moments = self.clips.moments[torch.from_numpy(indices)]
        captions = [self.clips.captions[int(i)] for i in indices]
        if self.prior is not None:
            prior_indices = rng.integers(0, len(self.prior.captions), self.prior_rows)
            moments = torch.cat([moments, self.prior.moments[torch.from_numpy(prior_indices)]])
            captions += [self.prior.captions[int(i)] for i in prior_indices]
        posterior = DiagonalGaussian(moments.to(self.device, torch.float32))
        x0 = to_dit_latents(posterior.sample(generator).float(), self.vae.config)
        b, channels = x0.shape[:2]
        sigma = self.sample_sigmas(b, generator)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        s = sigma.view(b, 1, 1, 1, 1)
        x = (1.0 - s) * x0 + s * noise
        if self.dit.config.image_condition == "latent_concat":
            x = torch.cat([x, torch.zeros(b, channels + 1, *x0.shape[2:], device=self.device)], dim=1)
        with torch.no_grad():
            text = self.text_encoder.encode(captions).to(self.device, torch.float32)
        guidance = None
        if self.dit.config.guidance_embed:
            guidance = torch.full((b,), self.guidance * 1000.0, device=self.device)
        inputs = (x, sigma * 1000.0, text.states, text.mask, text.pooled, guidance)
        prediction = adapted_forward(self.dit, self.adapter, *inputs).float()
        target = noise - x0
        if self.prior is not None:  # the prior rows keep the base model's own velocity
            with torch.no_grad():
                base = self.dit(*(v[own:] if v is not None else None for v in inputs)).float()
            target = torch.cat([target[:own], base])
        return F.mse_loss(prediction, target)

    def run_step(self, step: int) -> float:
        c = self.config
        self.set_lr(lr_at(step, c.lr, c.warmup_steps, c.lr_schedule, c.steps))
        loss = self.loss(step)
        self.optimize(loss)
        return float(loss.detach())

    # --- the result -------------------------------------------------------------------------------

    def export(self) -> Path:
        """The EMA adapter in the native format, with what it was trained on in its metadata."""
        c = self.config
        adapter: LoRAAdapter = self.ema.model  # type: ignore[assignment]
        metadata: dict[str, Any] = {
            "base_model": self.spec.name,
            "targets": list(c.targets),
            "modules": adapter.paths,
            "trigger": BOUNCING_TRIGGER,
            "steps": str(self.step),
            "batch_size": str(c.batch_size),
            "lr": repr(c.lr),
            "timestep_sampling": c.timestep_sampling,
            "min_sigma": repr(c.min_sigma),
            "prior_fraction": repr(c.prior_fraction),
            "guidance": repr(self.guidance),
            "seed": str(c.seed),
            "final_loss": f"{self.history[-1]:.6g}" if self.history else "",
        }
        path = save_adapter(adapter, c.adapter_path, metadata)
        logger.info("LoRA adapter written to %s (%d bytes)", path, path.stat().st_size)
        return path


def train_lora(config: LoRATrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train (or, with `config.resume`, continue) a LoRA adapter; returns the adapter file."""
    started = time.monotonic()
    path = LoRATrainer(config).train(on_step)
    logger.info("LoRA training took %.1f s", time.monotonic() - started)
    return path
