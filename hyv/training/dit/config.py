"""`DiTTrainConfig`: every knob of the DiT training loop, validated up front.

Choices worth knowing (see also hyv/training/dit/trainer.py):

* **Where the models come from.** `bundle` names a preset of `hyv.engine.bundle.BUNDLE_PRESETS`; the
  DiT and the built-in text encoder are freshly initialized from it (the DiT with its adaLN-Zero
  training init). `init_from` instead loads an existing bundle directory (fine-tuning, or a bundle
  whose VAE was trained first). `vae_path` / `text_encoder_path` replace the bundle's VAE / text
  encoder with ones on disk (the VAE trained by the VAE stage; HunyuanVideo's external encoders).
* **T2V + I2V in one model.** At random init the DiT gets `image_condition` (default
  "latent_concat": 33 input channels = noisy latent, image latent, mask), so even the "tiny"
  preset (16 channels) trains as a 33-channel model. `i2v_fraction` is the probability that a video
  sample is trained with its first latent frame as image condition (mask 1 on frame 0); the rest
  get an all-zero condition, which is text-to-video.
* **Timesteps.** sigma is drawn from a logit-normal (`sigmoid(N(logit_mean, logit_std))`, SD3's
  default) or uniformly in (0, 1), then HunyuanVideo's shift `s' = k s / (1 + (k - 1) s)` is applied
  with k = `flow_shift` (None: the bundle's inference `flow_shift`, 5.0 for the bundled model; 1.0
  disables it). Training and sampling thus concentrate on the same noise levels. With
  `unshifted_fraction` > 0 that share of each batch skips the shift: a mixture that still trains
  the high noise levels but also the low ones (a shift of 5 puts only ~0.7% of logit-normal
  samples below sigma 0.3).
* **Latent normalization.** `latent_norm="global"` feeds the DiT ``z * scaling_factor`` (HunyuanVideo,
  SD). The bundled VAE's 16 channels differ 8x in spread (std 0.2 to 1.6), so one factor leaves
  the quiet channels far below the noise until the last steps; `"per_channel"` (Wan's VAE does
  this) measures each channel's mean and std over `latent_stats_clips` training clips (the latent
  cache's first ones when there is one) before the first step, stores them in the VAE config as
  `latents_mean` / `latents_std`, and the DiT sees ``(z - mean) / std``; the exported bundle's
  VAE carries them, so the engine undoes the same map. A VAE that already has statistics keeps them.
* **Guidance embedding.** Base training feeds the fixed value `guidance` x 1000 (the embedding gets
  a meaning only in CFG distillation). With `freeze_guidance_embed` (default) a freshly initialized
  `guidance_in` has its output layer zeroed and is frozen, so it adds exactly zero to the
  conditioning vector: the trained model ignores whatever guidance the pipeline sends, until
  distillation unfreezes it.
* **Text encoder.** Frozen by default, as HunyuanVideo's LLaVA + CLIP (external encoders are always
  frozen); the built-in one is then a fixed random word-level transformer that the DiT's token
  refiner learns to read. `train_text_encoder=True` trains it jointly, but the DiT's loss then
  collapses the words it cannot use yet: after 20000 joint steps "moving left / right / up /
  down" encoded to states 0.07-0.10 apart (norm 10.5; 2.4-3.4 apart at the random init) and the
  directions were never learned (18.8% on train captions, chance 25%).
* **Latent cache.** With `cache_videos` > 0 the frozen VAE encodes that many train clips (and
  `cache_images` images) once, before the first step, and batches come from their posteriors
  (`hyv/training/dit/latents.py`): on the CPU the encoder costs more than the small DiT's step.
* **Continuations.** With `continuation_fraction` > 0 that share of the video steps trains on
  continuation clips (hyv/training/data/dataset.py: clips that start mid-motion or at a clip's end
  and run on, objects leaving or outgrowing the frame), always image-to-video from their first
  frame: what `POST /v1/videos/extensions` asks of the model. The latent cache holds
  `cache_continuations` of them per video bucket, starting at clip times in `continuation_starts`.
* **Batches.** `batch_size` is per process; a batch holds either videos (`num_frames` frames) or
  images (1 frame), chosen per step with probability `image_fraction`, so every batch has one
  shape. The data order is a pure function of (`seed`, step, rank), which is what makes `resume`
  exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyv.training.config_io import TrainConfig

TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
LATENT_NORMS = ("global", "per_channel")
MIXED_PRECISIONS = ("bf16", "no")


@dataclass
class DiTTrainConfig(TrainConfig):
    # --- shared fields (hyv.training.config_io.TrainConfig), with the DiT's defaults ---
    out_dir: Path = Path("runs/dit")
    steps: int = 10_000
    # --- models ---
    bundle: str = "small"  # preset for a fresh start (ignored when init_from is set)
    init_from: Path | None = None  # an existing bundle directory
    vae_path: Path | None = None  # replaces the bundle's VAE (frozen)
    text_encoder_path: Path | None = None  # replaces the bundle's text encoder
    image_condition: str | None = "latent_concat"  # DiT variant at a fresh start; None = T2V only
    train_text_encoder: bool = False  # True: the built-in encoder trained jointly (see above)
    gradient_checkpointing: bool = False
    # --- optimization ---
    weight_decay: float = 0.01  # AdamW, on weight matrices only (not biases, norms, embeddings)
    mixed_precision: str = "bf16"  # bf16 autocast on CUDA; always fp32 on CPU
    # --- data ---
    cache_videos: int = 0  # > 0: encode this many train videos once and train on their latents
    cache_images: int = 0  # images in the latent cache (needed when cache_videos > 0 and image_fraction > 0)
    # buckets drawn in proportion to (batch_size / clips per batch) ** bucket_balance (within the
    # images and within the videos; hyv.training.data.buckets.pick_bucket): 0 draws each equally
    # often; more gives the large buckets (few clips a batch) more steps
    bucket_balance: float = 0.0
    # --- flow matching and conditioning ---
    latent_norm: str = "global"  # global: z * scaling_factor; per_channel: (z - mean) / std per channel
    latent_stats_clips: int = 256  # clips whose posterior means give the per-channel statistics
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float | None = None  # None: the bundle's limits.flow_shift
    unshifted_fraction: float = 0.0  # share of the sigmas drawn without the shift (a mixture)
    text_dropout: float = 0.1  # caption -> "" (the unconditional / negative prompt) for CFG
    i2v_fraction: float = 0.3  # video samples conditioned on their first latent frame
    continuation_fraction: float = 0.0  # video steps on continuation clips (image-to-video)
    cache_continuations: int = 0  # continuation clips per video bucket in the latent cache
    continuation_starts: tuple[float, float] = (0.4, 1.0)  # clip times they start at
    guidance: float = 1.0  # fed x1000 to a guidance embedding during base training
    freeze_guidance_embed: bool = True

    def __post_init__(self) -> None:
        self.continuation_starts = (float(self.continuation_starts[0]), float(self.continuation_starts[1]))
        super().__post_init__()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        super().validate()
        self.check_int("latent_stats_clips", minimum=1)
        for name in ("cache_videos", "cache_images"):
            self.check_int(name, minimum=0)
        check_continuations(self)
        self.check("weight_decay", self.weight_decay >= 0)
        self.check("logit_std", self.logit_std > 0)
        self.check("guidance", self.guidance >= 0)
        if self.flow_shift is not None:
            self.check("flow_shift", self.flow_shift > 0)
        for name in ("text_dropout", "i2v_fraction", "unshifted_fraction", "bucket_balance"):
            self.check_fraction(name)
        self.check_choice("timestep_sampling", TIMESTEP_SAMPLINGS)
        self.check_choice("mixed_precision", MIXED_PRECISIONS)
        self.check_choice("latent_norm", LATENT_NORMS)
        if self.image_condition not in (None, "latent_concat"):
            self.fail("image_condition", "must be None or 'latent_concat'")
        if self.image_condition is None and self.i2v_fraction > 0 and self.init_from is None:
            self.fail("i2v_fraction", "must be 0 for a text-to-video-only DiT")
        if not self.bundle:
            self.fail("bundle", "must name a bundle preset")


def check_continuations(config: TrainConfig) -> None:
    """The continuation fields that the DiT and distillation configs share, or ValueError naming one."""
    config.check_fraction("continuation_fraction")
    config.check_int("cache_continuations", minimum=0)
    lo, hi = getattr(config, "continuation_starts")  # noqa: B009 (configs without it fail loudly)
    config.check("continuation_starts", 0.0 <= lo <= hi, "must be 0 <= lo <= hi")
    wanted, cached = getattr(config, "continuation_fraction"), getattr(config, "cache_continuations")  # noqa: B009
    if wanted > 0 and getattr(config, "cache_videos") > 0 and cached == 0:  # noqa: B009
        config.fail("cache_continuations", "must be > 0 when continuation_fraction > 0 with a latent cache")
