"""Distillation of the trained DiT (`hyv train distill`): CFG into the guidance embedding, then
steps (<= 6) by phased trajectory distillation. Each stage writes a served bundle."""

from __future__ import annotations

from pathlib import Path

from hyv.training.distill.cfg import CFGDistiller
from hyv.training.distill.config import STAGES, DistillConfig
from hyv.training.distill.steps import StepDistiller
from hyv.training.distill.trainer import BUNDLE_SUBDIR, METRICS_FILE, DistillTrainer, StepCallback

TRAINERS: dict[str, type[DistillTrainer]] = {"cfg": CFGDistiller, "steps": StepDistiller}


def make_trainer(config: DistillConfig) -> DistillTrainer:
    """The trainer of `config.stage`."""
    return TRAINERS[config.stage](config)


def train_distill(config: DistillConfig, on_step: StepCallback | None = None) -> Path:
    """Run (or, with `config.resume`, continue) one stage; returns its bundle directory."""
    return make_trainer(config).train(on_step)


__all__ = [
    "BUNDLE_SUBDIR",
    "METRICS_FILE",
    "STAGES",
    "CFGDistiller",
    "DistillConfig",
    "DistillTrainer",
    "StepDistiller",
    "make_trainer",
    "train_distill",
]
