"""DiT training: flow matching on VAE latents, T2V + I2V in one 33-channel model (`hyv train dit`)."""

from hyv.training.dit.config import DiTTrainConfig
from hyv.training.dit.data import BatchSource, FixedBatch, SyntheticBatches, TrainBatch
from hyv.training.dit.trainer import DiTTrainer, FlowModel, build_bundle, train_dit
from hyv.training.state import EMA, latest_checkpoint, list_checkpoints, save_loss_plot

__all__ = [
    "EMA",
    "BatchSource",
    "DiTTrainConfig",
    "DiTTrainer",
    "FixedBatch",
    "FlowModel",
    "SyntheticBatches",
    "TrainBatch",
    "build_bundle",
    "latest_checkpoint",
    "list_checkpoints",
    "save_loss_plot",
    "train_dit",
]
