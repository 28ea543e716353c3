"""The VAE training loop (HunyuanVideo's recipe, scaled down): see hyv/training/vae/config.py.

One step:

    batch = the curriculum's clips for this step (pure function of seed and step: exact resume)
    posterior = encode(video)  (tiled with small tiles in the tiling phase, at random)
    recon = decode(posterior.sample())
    rec = L1(recon, video) + w_p * perceptual(recon, video)
    loss = rec + w_kl * KL/latent element [+ w_gan * adaptive * (-D(recon)) after gan_start]
    AdamW step (grad clipping), EMA update; then, after gan_start, a hinge-loss step of D.

At the end the EMA weights get their scaling factor (1 / latent std) and are saved with
`hyv.models.save_vae` in out_dir/vae; held-out PSNR/SSIM go to out_dir/eval.json and a side-by-side
PNG to out_dir/reconstructions.png.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hyv.models import CausalVAE3D, load_vae, save_vae
from hyv.models.vae_blocks import CausalConv3d, ResnetBlockCausal3D
from hyv.models.vae_config import vae_preset
from hyv.training.core import RESUME_FREE, Trainer
from hyv.training.dit.data import step_seed
from hyv.training.state import EMA, lr_at
from hyv.training.vae.config import VAETrainConfig
from hyv.training.vae.data import VAEBatch, VAEBatches, phase_name
from hyv.training.vae.evaluate import evaluate_vae, heldout_videos, save_reconstructions, scaling_factor
from hyv.training.vae.losses import (
    FixedFeatures,
    PatchDiscriminator3D,
    adaptive_gan_weight,
    hinge_d_loss,
    perceptual_loss,
)

logger = logging.getLogger(__name__)

VAE_SUBDIR = "vae"
EVAL_JSON = "eval.json"
RECON_PNG = "reconstructions.png"
METRICS = ("loss", "l1", "kl", "perceptual", "gan", "gan_weight", "disc", "psnr")
LOG_EVERY = 50
# `steps` is not free: the learning rate, curriculum and loss weights are scheduled over it.
_RESUME_FREE = (RESUME_FREE - {"steps"}) | {"eval_clips"}


def init_posterior_logvar(vae: CausalVAE3D, logvar: float) -> None:
    """Start the posterior's log-variance at `logvar` (bias of quant_conv's second half, weights 0).

    At PyTorch's default init logvar ~ 0: the sampled latents are mostly unit noise, and the
    decoder learns to ignore them (it stalls at the background-only ~16 dB); with a small start
    the latents carry the clip from the first step, and the KL term decides where logvar goes."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(logvar)  # type: ignore[index]


def foreground_weight(video: torch.Tensor, weight: float, threshold: float = 0.1) -> torch.Tensor:
    """Per-pixel loss weight (B, 1, T, H, W): 1 on the background, 1 + `weight` on the object.

    The background of a frame is its per-channel median (a flat color covering most pixels);
    a pixel differing from it by more than `threshold` in any channel is object (or its edge).
    Objects cover a few percent of a frame, so an unweighted loss is dominated by the flat
    background, and a young VAE settles on "background only" (~16 dB) for hundreds of steps."""
    if weight == 0:
        return video.new_ones(())
    background = video.flatten(3).median(dim=3).values[..., None, None]  # (B, 3, T, 1, 1)
    foreground = (video - background).abs().amax(dim=1, keepdim=True) > threshold
    return 1.0 + weight * foreground.to(video.dtype)


def zero_init_residuals(vae: CausalVAE3D) -> None:
    """Zero the last conv of every resnet block, so each starts as its shortcut (the identity).

    The deep-resnet trick ("zero-init residual", Goyal et al. 2017; Fixup): the fresh VAE behaves
    like a shallow net (convs in/out, resamplers) and learns to place objects much sooner."""
    for module in vae.modules():
        if isinstance(module, ResnetBlockCausal3D):
            with torch.no_grad():
                module.conv2.conv.weight.zero_()
                if module.conv2.conv.bias is not None:
                    module.conv2.conv.bias.zero_()


def inflate_temporal_kernels(vae: CausalVAE3D) -> None:
    """Fold every causal conv's temporal taps into its last (current-frame) tap.

    After the image phase only the sum over a kernel's taps is trained: a 1-frame clip is padded
    by replicating its frame, so every tap sees the same input. On a video those untrained
    per-tap splits mix past frames into garbage (later frames drift back towards frame 0:
    16 dB held-out). With all the weight on the current frame each frame is encoded as the image
    it is and the strided convs keep every other frame: the VAE starts its video phases as a
    keyframe codec (23 dB held-out straight away, docs/training.md) and only has to learn the
    in-between frames. The image behaviour is unchanged (same sum)."""
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, CausalConv3d) and module.conv.weight.shape[2] > 1:
                weight = module.conv.weight  # (out, in, k_t, k_h, k_w)
                folded = weight.sum(dim=2)
                weight.zero_()
                weight[:, :, -1] = folded


class VAETrainer(Trainer[VAETrainConfig, dict[str, float]]):
    progress_label = "vae"
    progress_text = "{task.fields[phase]} l1 {task.fields[l1]} psnr {task.fields[psnr]}"
    progress_fields = ("phase", "l1", "psnr")
    history_key = "history"
    csv_columns = METRICS
    plot_title = "VAE loss"
    plot_ylabel = "L1 + MSE + perceptual + KL (+ GAN)"
    resume_free = _RESUME_FREE

    def __init__(self, config: VAETrainConfig) -> None:
        super().__init__(config)
        c = config
        self.device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(c.seed)
        if c.init_from is not None:
            vae = load_vae(c.init_from, dtype=torch.float32)
        else:
            vae = CausalVAE3D(vae_preset(c.preset))
            init_posterior_logvar(vae, c.init_logvar)
            if c.zero_init_residual:
                zero_init_residuals(vae)
        self.vae = self.trained = vae.to(self.device).train()
        if not c.train_encoder:  # a decoder fine-tune: the encoder (and so every latent) stays as is
            self.vae.encoder.requires_grad_(False)
            self.vae.quant_conv.requires_grad_(False)
        self.features = FixedFeatures().to(self.device)
        self.disc = PatchDiscriminator3D().to(self.device).train()
        self.ema = EMA(self.vae, c.ema_decay)
        self.ema_vae: CausalVAE3D = self.ema.model  # type: ignore[assignment]
        self.optimizer = self._new_optimizer()
        self.disc_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=c.disc_lr, betas=(0.5, 0.9))
        self.batches = VAEBatches(c)
        self.tiling = c.tiling()
        self._probe: list[torch.Tensor] | None = None
        self._phase = "-"  # of the last step, for the progress bar and the log
        self._window: list[dict[str, float]] = []  # metrics since the last log line
        if c.resume:
            self.resume()

    def _new_optimizer(self) -> torch.optim.AdamW:
        c = self.config
        trained = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(trained, lr=c.lr, betas=c.betas, weight_decay=0.0)

    def start_videos(self) -> None:
        """The image phase is over: inflate the temporal kernels (model and EMA) and start Adam
        afresh (its moments were per tap, and the taps just changed)."""
        inflate_temporal_kernels(self.vae)
        inflate_temporal_kernels(self.ema_vae)
        self.optimizer = self._new_optimizer()
        logger.info("step %d: image phase done; temporal kernels inflated to the current frame", self.step)

    def is_video_start(self, step: int) -> bool:
        """The first step after the image phase (if there is one)."""
        return step > 0 and phase_name(self.config, step - 1) == "images" != phase_name(self.config, step)

    # --- one step ---------------------------------------------------------------------------------

    def lr(self, step: int) -> float:
        """Warmup + schedule, restarted at the first video step when there is an image phase
        (`video_lr` from there: the inflated VAE is a different optimization problem)."""
        c = self.config
        base, start, end = c.lr, 0, c.steps
        images_end = round(c.image_phase_fraction * c.steps)
        if 0 < images_end < c.steps:
            if step < images_end:
                end = images_end
            else:
                base, start = (c.video_lr if c.video_lr is not None else c.lr), images_end
        scale = lr_at(step - start, 1.0, c.warmup_steps, c.lr_schedule, end - start)
        if step - start >= c.warmup_steps:
            scale = c.min_lr_ratio + (1.0 - c.min_lr_ratio) * scale
        return base * scale

    def foreground_weight_at(self, step: int) -> float:
        """Linear from `foreground_weight` (find the objects) to `foreground_weight_end` (exact
        background colors, which dominate PSNR) over the run."""
        c = self.config
        return c.foreground_weight + (c.foreground_weight_end - c.foreground_weight) * step / c.steps

    def gan_active(self, step: int) -> bool:
        return self.config.gan_weight > 0 and step >= self.config.gan_start

    def train_step(self, step: int, batch: VAEBatch | None = None) -> dict[str, float]:
        c = self.config
        self.set_lr(self.lr(step))
        batch = batch if batch is not None else self.batches.batch(step)
        generator = torch.Generator(device=self.device).manual_seed(step_seed(c.seed, step, 0))
        video = batch.video.to(self.device)
        tiled = batch.phase.tiled
        tiling = self.tiling if tiled else None
        posterior = self.vae.encode(video, tiled=tiled, tiling=tiling)
        z = posterior.sample(generator)
        recon = self.vae.decode(z, tiled=tiled, tiling=tiling)
        weight = foreground_weight(video, self.foreground_weight_at(step))  # (B, 1, T, H, W)
        l1 = ((recon - video).abs() * weight).mean()
        kl = posterior.kl().sum() / z.numel()
        perceptual = (
            perceptual_loss(self.features, recon, video) if c.perceptual_weight > 0 else l1.new_zeros(())
        )
        mse = ((recon - video).pow(2) * weight).mean() if c.mse_weight > 0 else l1.new_zeros(())
        rec = l1 + c.mse_weight * mse + c.perceptual_weight * perceptual
        loss = rec + c.kl_weight * kl
        gan = gan_weight = l1.new_zeros(())
        use_gan = self.gan_active(step)
        if use_gan:
            self.disc.requires_grad_(False)
            gan = -self.disc(recon).mean()
            last = self.vae.decoder.conv_out.conv.weight
            gan_weight = adaptive_gan_weight(rec, gan, last) * c.gan_weight
            loss = loss + gan_weight * gan
        self.optimize(loss)
        disc_loss = l1.new_zeros(())
        if use_gan:
            self.disc.requires_grad_(True)
            disc_loss = hinge_d_loss(self.disc(video), self.disc(recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            self.disc_optimizer.step()
        clamped_mse = F.mse_loss(recon.detach().clamp(-1, 1), video).item()
        values = (loss, l1, kl, perceptual, gan, gan_weight, disc_loss)
        metrics = {name: float(v.detach()) for name, v in zip(METRICS, values, strict=False)}
        metrics["psnr"] = 10.0 * torch.log10(torch.tensor(4.0 / max(clamped_mse, 1e-12))).item()
        return metrics

    # --- the loop (hyv/training/core.py) ---------------------------------------------------------

    def run_step(self, step: int) -> dict[str, float]:
        if self.is_video_start(step):
            self.start_videos()
        batch = self.batches.batch(step)
        self._phase = batch.phase.name
        return self.train_step(step, batch)

    def progress_values(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"phase": self._phase, "l1": f"{metrics['l1']:.4f}", "psnr": f"{metrics['psnr']:.1f}"}

    def after_step(self, metrics: dict[str, float]) -> None:
        """Every LOG_EVERY steps (and at the last), the means of the metrics since the last line."""
        c = self.config
        self._window.append(metrics)
        if self.step % LOG_EVERY == 0 or self.step == c.steps:
            means = {k: sum(m[k] for m in self._window) / len(self._window) for k in METRICS}
            logger.info(
                "step %d/%d (%s) %.0fs lr %.2e | %s",
                self.step,
                c.steps,
                self._phase,
                time.monotonic() - self.train_started,
                self.lr(self.step - 1),
                " ".join(f"{k} {v:.4g}" for k, v in means.items()),
            )
            self._window = []

    def on_checkpoint(self) -> None:
        self.log_heldout()

    def log_heldout(self, clips: int = 4) -> dict[str, Any]:
        """Untiled held-out PSNR/SSIM of the EMA weights on a few clips at the final size (logged)."""
        c = self.config
        if self._probe is None:
            self._probe = heldout_videos(clips, c.num_frames, c.size, seed=c.seed)
        result = evaluate_vae(self.ema_vae, self._probe)
        logger.info(
            "step %d: held-out PSNR %.2f dB, SSIM %.4f (EMA, %d clips, untiled)",
            self.step,
            result["untiled"]["psnr"],
            result["untiled"]["ssim"],
            result["clips"],
        )
        return result

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "disc": self.disc.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict(),
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        super().load_state_dict(payload)
        self.disc.load_state_dict(payload["disc"])
        self.disc_optimizer.load_state_dict(payload["disc_optimizer"])

    def parse_metrics(self, saved: Any) -> dict[str, float]:
        return dict(saved)

    # --- export -----------------------------------------------------------------------------------

    def final_vae(self) -> CausalVAE3D:
        """The EMA weights with the measured scaling factor in their config (eval mode); a decoder
        fine-tune keeps its starting VAE's factor, since its latents are those of the same encoder."""
        c = self.config
        ema = self.ema_vae
        config = ema.config
        if c.train_encoder:
            videos = [self.batches.video(i, c.num_frames, c.size) for i in range(c.scale_clips)]
            factor = scaling_factor(ema, [torch.stack(videos[i : i + 4]) for i in range(0, len(videos), 4)])
            config = dataclasses.replace(config, scaling_factor=factor)
        vae = CausalVAE3D(config).to(self.device)
        vae.load_state_dict(ema.state_dict())
        return vae.eval()

    def export(self, directory: Path | None = None) -> Path:
        c = self.config
        directory = directory or self.out_dir / VAE_SUBDIR
        vae = self.final_vae()
        save_vae(vae, directory)
        logger.info("saved VAE to %s (scaling factor %.4f)", directory, vae.config.scaling_factor)
        videos = heldout_videos(c.eval_clips, c.num_frames, c.size, seed=c.seed)
        result: dict[str, Any] = evaluate_vae(vae, videos, self.tiling)
        result.update(
            scaling_factor=vae.config.scaling_factor,
            size=c.size,
            frames=c.num_frames,
            steps=self.step,
            tiling={
                "sample_size": self.tiling.sample_size,
                "sample_frames": self.tiling.sample_frames,
                "overlap": self.tiling.overlap,
            },
        )
        (self.out_dir / EVAL_JSON).write_text(json.dumps(result, indent=2) + "\n")
        logger.info(
            "held-out PSNR %.2f dB / SSIM %.4f untiled, %.2f dB / %.4f tiled",
            result["untiled"]["psnr"],
            result["untiled"]["ssim"],
            result["tiled"]["psnr"],
            result["tiled"]["ssim"],
        )
        save_reconstructions(vae, videos[0], self.out_dir / RECON_PNG, self.tiling)
        return directory


def train_vae(config: VAETrainConfig, on_step: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train (or, with `config.resume`, continue training) the VAE; returns the saved VAE directory."""
    return VAETrainer(config).train(on_step)
