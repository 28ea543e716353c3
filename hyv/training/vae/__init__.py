"""VAE training (`hyv train vae`): L1 + KL + fixed-feature perceptual + 3D patch GAN, with a curriculum."""

from hyv.training.vae.config import VAETrainConfig
from hyv.training.vae.trainer import VAETrainer, train_vae

__all__ = ["VAETrainConfig", "VAETrainer", "train_vae"]
