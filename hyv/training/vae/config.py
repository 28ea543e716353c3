"""`VAETrainConfig`: every knob of the VAE training loop, validated up front.

The curriculum (see hyv/training/vae/data.py) has five phases over `steps`:

0. images: the first `image_phase_fraction` of the steps train on images only, `image_batch_size`
   random `crop_size` px windows of full-size frames per batch: many objects per second at the final
   pixel scale. A young VAE on this data first learns the flat background and leaves that ~16 dB
   plateau only after seeing some 40k objects (docs/training.md), which small video batches take
   hours to show on a CPU;
1. low resolution: the next `low_res_fraction` of the steps train on `low_res_size` px,
   `low_res_frames`-frame clips, `low_res_batch_size` per batch (cheap, learns colors and shapes);
2. crops: the next `crop_fraction` of the steps render full-size, full-length clips and train on
   random `crop_size` px windows of them (`low_res_batch_size` per batch): the final pixel scale
   and length at a fraction of the cost (the VAE is convolutional);
3. full size: `size` px, `num_frames` frames, `batch_size` per batch;
4. tiling: the last `tiling_fraction` of the steps, each video batch is encoded and decoded tiled
   with probability `tiling_probability` (tiles of `tile_size` px / `tile_frames` frames, smaller
   than the clip), so the model learns seamless tiles (HunyuanVideo's cure for tile seams).

In every phase a step's batch is images (1-frame clips) with probability `image_fraction`, and a
video batch samples its frames every k-th "native" frame with k uniform in 1..`max_frame_interval`
(a 17-frame clip with the largest interval covers the whole motion, the clip the DiT sees).

Losses: L1 + `mse_weight` x L2 (both weighted 1 + `foreground_weight` on object pixels) +
`kl_weight` x KL (per latent element) + `perceptual_weight` x a fixed random-feature perceptual
loss + (from step `gan_start`) `gan_weight` x the adaptive-weighted hinge GAN loss of a 3D patch
discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hyv.models.vae_config import VAETiling
from hyv.training.config_io import TrainConfig


@dataclass
class VAETrainConfig(TrainConfig):
    # --- shared fields (hyv.training.config_io.TrainConfig), with the VAE's defaults ---
    out_dir: Path = Path("runs/vae")
    steps: int = 6000
    batch_size: int = 2  # clips per batch at the final size (phases 3 and 4)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    ema_decay: float = 0.99
    size: int = 64  # final (square) size, a multiple of 8
    num_frames: int = 17  # final clip length, 4n + 1
    checkpoint_every: int = 100
    # --- model ---
    preset: str = "small-flat"  # hyv.models.vae_preset name of the fresh VAE
    init_from: Path | None = None  # start from a saved VAE instead (fine-tuning)
    # False: only the decoder trains, so the latents (and a DiT trained on them) stay valid
    train_encoder: bool = True
    # --- optimization ---
    video_lr: float | None = 2e-4  # lr after the image phase (None: lr); warmup and schedule restart there
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    # --- curriculum ---
    image_phase_fraction: float = 0.4
    image_batch_size: int = 32
    low_res_size: int = 32
    low_res_frames: int = 9
    low_res_batch_size: int = 4
    low_res_fraction: float = 0.0
    crop_size: int = 32
    crop_fraction: float = 0.4
    # Crop-phase clips are rendered at a size drawn per step from these (default: `size` only), so a
    # fine-tune can learn one bucket's scale without forgetting another's.
    crop_render_sizes: tuple[int, ...] = ()
    tiling_fraction: float = 0.1
    tiling_probability: float = 0.5
    tile_size: int = 48  # px; with tile_overlap 1/3: stride 32, so 64 px splits into 2 tiles
    tile_frames: int = 12  # frames; with tile_overlap 1/3: stride 8, so 17 frames make 2 tiles
    tile_overlap: float = 1.0 / 3.0
    max_frame_interval: int = 8
    # --- losses ---
    foreground_weight: float = 10.0  # extra L1/L2 weight on object pixels at step 0 (trainer.py)
    foreground_weight_end: float = 1.0  # ... decaying linearly to this at the last step
    mse_weight: float = 1.0  # an L2 term beside L1 (PSNR, the acceptance metric, is L2)
    kl_weight: float = 1e-5
    zero_init_residual: bool = True  # fresh VAE: resnet blocks start as the identity (trainer.py)
    init_logvar: float = -8.0  # initial posterior log-variance of a fresh VAE (see trainer.py)
    perceptual_weight: float = 0.1
    gan_weight: float = 0.1  # times the adaptive weight |grad rec| / |grad gan| at the last layer
    gan_start: int = 5400  # first step with the GAN loss (the discriminator trains from here too)
    disc_lr: float = 2e-4
    # --- after training ---
    scale_clips: int = 32  # train clips whose posterior-mode std gives the scaling factor
    eval_clips: int = 44  # held-out clips for PSNR/SSIM (44 = every held-out combination once)

    SIZE_MULTIPLE: ClassVar[int] = 8
    SIZE_WHY: ClassVar[str] = "8x VAE downsampling"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        super().validate()
        for name in (
            "low_res_batch_size",
            "image_batch_size",
            "max_frame_interval",
            "scale_clips",
            "eval_clips",
        ):
            self.check_int(name, minimum=1)
        self.check_int("gan_start", minimum=0)
        self.check_int("low_res_frames", minimum=1)
        if (self.low_res_frames - 1) % 4:
            self.fail("low_res_frames", "must be 4n+1")
        for name in ("low_res_size", "crop_size", "tile_size"):
            value = getattr(self, name)
            self.check(
                name, isinstance(value, int) and value >= 8 and value % 8 == 0, "must be a multiple of 8"
            )
        self.check("low_res_size", self.low_res_size <= self.size, "must be <= size")
        self.check("crop_size", self.crop_size <= self.size, "must be <= size")
        self.crop_render_sizes = tuple(self.crop_render_sizes)  # a list after a JSON round trip
        for size in self.crop_render_sizes:
            self.check(
                "crop_render_sizes",
                isinstance(size, int) and size % 8 == 0 and self.crop_size <= size,
                f"must hold multiples of 8 no smaller than crop_size {self.crop_size}, got {size!r}",
            )
        self.check("low_res_frames", self.low_res_frames <= self.num_frames, "must be <= num_frames")
        self.check("tile_frames", self.tile_frames > 0 and self.tile_frames % 4 == 0, "must be 4n")
        self.check("disc_lr", self.disc_lr > 0, "must be > 0")
        self.check("video_lr", self.video_lr is None or self.video_lr > 0, "must be > 0 or None")
        self.check("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]")
        for name in ("foreground_weight", "mse_weight", "kl_weight", "perceptual_weight", "gan_weight"):
            self.check(name, getattr(self, name) >= 0, "must be >= 0")
        for name in (
            "image_phase_fraction",
            "low_res_fraction",
            "crop_fraction",
            "tiling_fraction",
            "tiling_probability",
        ):
            self.check_fraction(name)
        fractions = self.image_phase_fraction + self.low_res_fraction + self.crop_fraction
        if fractions + self.tiling_fraction > 1.0:
            self.fail(
                "tiling_fraction",
                "plus image_phase_fraction, low_res_fraction and crop_fraction must be <= 1",
            )
        try:
            self.tiling()
        except ValueError as error:
            raise ValueError(
                f"VAETrainConfig tile_size={self.tile_size}, tile_frames={self.tile_frames}, "
                f"tile_overlap={self.tile_overlap} do not make valid tiles: {error}"
            ) from error

    def tiling(self) -> VAETiling:
        """The `models.VAETiling` of the tiling phase (and of the tiled evaluation)."""
        return VAETiling(
            sample_size=self.tile_size, sample_frames=self.tile_frames, overlap=self.tile_overlap
        )
