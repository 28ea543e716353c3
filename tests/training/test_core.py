"""hyv/training/core.py on a toy trainer: the loop, checkpoints, loss files and exact resume that
the VAE, DiT and distillation trainers (and any later one) share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from hyv.training.config_io import TrainConfig
from hyv.training.core import LOSS_CSV, LOSS_PLOT, Trainer
from hyv.training.state import EMA, list_checkpoints


@dataclass
class ToyConfig(TrainConfig):
    steps: int = 6
    checkpoint_every: int = 2
    warmup_steps: int = 0
    progress: bool = False


class ToyTrainer(Trainer[ToyConfig, float]):
    progress_label = "toy"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)
        self.trained = nn.Linear(4, 1)
        self.ema = EMA(self.trained, config.ema_decay)
        self.optimizer = torch.optim.AdamW(self.trained.parameters(), lr=config.lr)
        self.checkpoints_seen: list[int] = []
        if config.resume:
            self.resume()

    def run_step(self, step: int) -> float:
        x = torch.randn(8, 4)  # the global RNG: restored from the checkpoint on resume
        loss = (self.trained(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        self.optimize(loss)
        return self.mean_over_ranks(loss)

    def on_checkpoint(self) -> None:
        self.checkpoints_seen.append(self.step)

    def export(self) -> Path:
        return self.out_dir


class _KilledError(Exception):
    pass


def test_loop_checkpoints_and_loss_files(tmp_path: Path) -> None:
    trainer = ToyTrainer(ToyConfig(out_dir=tmp_path, lr=1e-2, keep_checkpoints=2))
    assert trainer.train() == tmp_path
    assert trainer.step == 6 and len(trainer.history) == 6
    assert trainer.checkpoints_seen == [2, 4, 6]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 6]
    lines = (tmp_path / LOSS_CSV).read_text().splitlines()
    assert lines[0] == "step,loss" and len(lines) == 7 and lines[1].startswith("1,")
    assert (tmp_path / LOSS_PLOT).is_file()
    payload = torch.load(list_checkpoints(tmp_path)[-1][1], weights_only=False)
    assert {"model", "ema", "optimizer", "losses", "config", "step", "rng"} <= set(payload)


def test_resume_replays_the_run(tmp_path: Path) -> None:
    straight = ToyTrainer(ToyConfig(out_dir=tmp_path / "a"))
    straight.train()

    def kill(step: int, loss: float) -> None:
        if step == 3:
            raise _KilledError

    with pytest.raises(_KilledError):
        ToyTrainer(ToyConfig(out_dir=tmp_path / "b")).train(kill)
    resumed = ToyTrainer(ToyConfig(out_dir=tmp_path / "b", resume=True))
    assert resumed.step == 2 and len(resumed.history) == 2
    resumed.train()
    assert resumed.history == straight.history
    for name, value in straight.trained.state_dict().items():
        assert torch.equal(value, resumed.trained.state_dict()[name]), name


def test_shared_config_fields_are_validated_by_name(tmp_path: Path) -> None:
    for field, value in (
        ("steps", 0),
        ("lr", 0.0),
        ("ema_decay", 1.0),
        ("lr_schedule", "step"),
        ("size", 40),
    ):
        with pytest.raises(ValueError, match=f"ToyConfig.{field}="):
            ToyConfig(out_dir=tmp_path, **{field: value})  # type: ignore[arg-type]
    assert ToyConfig.from_dict(ToyConfig(out_dir=str(tmp_path)).to_dict()).out_dir == tmp_path  # type: ignore[arg-type]
