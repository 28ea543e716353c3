"""The training core every trainer plugs into: the step loop with its progress bar, checkpoints,
exact resume, the loss files and the distributed plumbing.

A trainer (VAE, DiT, the distillation stages; a LoRA trainer the same way) subclasses `Trainer`
and provides:

* `trained`, `ema` and `optimizer` attributes: the module being optimized, its `EMA` and the
  optimizer (checkpointed as "model", "ema" and "optimizer");
* `run_step(step)`: one optimizer step at (0-based) `step`, returning its metrics: a float (the
  loss) or a dict of floats with a "loss" entry;
* `export()`: what the run produces once `config.steps` are done (a bundle, a VAE directory);

and, where it has more to carry, `state_dict()` / `load_state_dict()` (extra checkpoint entries),
`on_checkpoint()` (runs after every checkpoint) and `after_step(metrics)`.

Checkpoints are `out_dir/checkpoints/step_XXXXXXXX.pt` (hyv/training/state.py) holding the
`state_dict()` entries, the metrics history under `history_key`, the config, the step and the RNG
states; `losses.csv` and `loss.png` beside them are rewritten at every checkpoint. Under torchrun
rank 0 writes and every rank waits for it.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from hyv.training.config_io import TrainConfig
from hyv.training.state import EMA, load_for_resume, save_checkpoint, save_loss_plot

logger = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
LOSS_CSV = "losses.csv"
# Config fields a resumed run may change without changing the result.
RESUME_FREE = frozenset({"resume", "progress", "steps", "checkpoint_every", "keep_checkpoints", "device"})

ConfigT = TypeVar("ConfigT", bound=TrainConfig)
Metrics = TypeVar("Metrics", float, dict[str, float])
StepCallback = Callable[[int, float], None]  # on_step(step, loss) of a trainer whose metrics are its loss


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); creates the process group under torchrun if needed."""
    if not dist.is_available():
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return 0, 1, 0


def process_device(device: str | None, local_rank: int) -> torch.device:
    """`device` (a bare "cuda" becomes cuda:LOCAL_RANK), or cuda:LOCAL_RANK if available, else cpu."""
    if device is not None:
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None:
            return torch.device("cuda", local_rank)
        return resolved
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on the trainable weight matrices only (not biases, norms, embeddings)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer(ABC, Generic[ConfigT, Metrics]):
    """The loop, checkpoints and resume; see the module docstring for what a subclass provides."""

    progress_label: ClassVar[str] = ""  # shown bold before the bar
    progress_text: ClassVar[str] = "loss {task.fields[loss]}"  # the bar's last column
    progress_fields: ClassVar[tuple[str, ...]] = ("loss",)  # the fields it reads ("-" until step 1)
    history_key: ClassVar[str] = "losses"  # the metrics history's checkpoint entry
    csv_columns: ClassVar[tuple[str, ...]] = ("loss",)
    plot_title: ClassVar[str] = "DiT flow-matching loss"
    plot_ylabel: ClassVar[str] = "MSE (velocity)"
    resume_free: ClassVar[frozenset[str]] = RESUME_FREE

    config: ConfigT
    out_dir: Path
    trained: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer

    def __init__(self, config: ConfigT, rank: int = 0, world: int = 1) -> None:
        self.config = config
        self.out_dir = config.out_dir
        self.rank, self.world = rank, world
        self.step = 0
        self.history: list[Metrics] = []

    # --- what a trainer provides -----------------------------------------------------------------

    @abstractmethod
    def run_step(self, step: int) -> Metrics:
        """One optimizer step at `step`; its metrics."""

    @abstractmethod
    def export(self) -> Path:
        """Write what the finished run produces; its path."""

    def after_step(self, metrics: Metrics) -> None:
        """Runs after each step's bookkeeping (`self.step` already counts it), before its checkpoint."""

    def on_checkpoint(self) -> None:
        """Runs after each checkpoint of the loop."""

    def progress_values(self, metrics: Metrics) -> dict[str, str]:
        """The bar's fields after a step."""
        return {"loss": f"{_row(metrics)['loss']:.4f}"}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's training state (the core adds the history, config, step and RNG)."""
        return {
            "model": self.trained.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.trained.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])

    # --- shared step helpers ---------------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimize(self, loss: torch.Tensor) -> None:
        """Backward, grad clipping (`config.grad_clip`, 0: off), the optimizer step and the EMA update."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            params = [p for p in self.trained.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.trained)

    def mean_over_ranks(self, loss: torch.Tensor) -> float:
        value = loss.detach()
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return float(value)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def show_progress(self) -> bool:
        return self.config.progress and self.rank == 0

    # --- the loop --------------------------------------------------------------------------------

    def train(self, on_step: Callable[[int, Metrics], None] | None = None) -> Path:
        """Run up to `config.steps`, checkpointing on the way; returns `export()`.

        `on_step(step, metrics)` runs after each step (and its checkpoint, if any)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        c = self.config
        columns = (
            TextColumn(f"[bold]{self.progress_label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn(self.progress_text),
        )
        self.train_started = time.monotonic()
        with Progress(*columns, disable=not self.show_progress, transient=False) as bar:
            blank: dict[str, Any] = dict.fromkeys(self.progress_fields, "-")
            task = bar.add_task(self.progress_label, total=c.steps, completed=self.step, **blank)
            while self.step < c.steps:
                metrics = self.run_step(self.step)
                self.step += 1
                self.history.append(metrics)
                fields: dict[str, Any] = self.progress_values(metrics)
                bar.update(task, advance=1, **fields)
                self.after_step(metrics)
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
                    self.on_checkpoint()
                if on_step is not None:
                    on_step(self.step, metrics)
        return self.export()

    # --- state -----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint, the loss CSV and the loss PNG; every rank waits for it."""
        path = None
        if self.rank == 0:
            payload = {
                **self.state_dict(),
                self.history_key: list(self.history),
                "config": self.config.to_dict(),
            }
            path = save_checkpoint(self.out_dir, self.step, payload, self.config.keep_checkpoints)
            rows = [_row(m) for m in self.history]
            (self.out_dir / LOSS_CSV).write_text(_csv(rows, self.csv_columns))
            save_loss_plot(
                [r["loss"] for r in rows],
                self.out_dir / LOSS_PLOT,
                title=self.plot_title,
                ylabel=self.plot_ylabel,
            )
        self.barrier()
        return path

    def resume(self) -> None:
        """Continue from the newest checkpoint in `out_dir` (RNG states included), if there is one."""
        payload = load_for_resume(self.out_dir, self.config.to_dict(), set(self.resume_free))
        if payload is None:
            return
        self.load_state_dict(payload)
        self.step = int(payload["step"])
        self.history = [self.parse_metrics(m) for m in payload[self.history_key]]

    def parse_metrics(self, saved: Any) -> Metrics:
        """One saved history entry as `run_step` returns it."""
        return float(saved)  # type: ignore[return-value]


def _row(metrics: float | dict[str, float]) -> dict[str, float]:
    return metrics if isinstance(metrics, dict) else {"loss": metrics}


def _csv(rows: list[dict[str, float]], columns: tuple[str, ...]) -> str:
    lines = [",".join(("step", *columns))]
    lines += [",".join((str(i + 1), *(f"{row[k]:.6g}" for k in columns))) for i, row in enumerate(rows)]
    return "\n".join(lines) + "\n"
