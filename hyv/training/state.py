"""Training state on disk: EMA, resumable checkpoints, RNG states and the loss curve.

Checkpoints are `out_dir/checkpoints/step_XXXXXXXX.pt` (written to a temporary name and renamed,
so a kill mid-write never leaves a truncated "newest" checkpoint), holding the trainable model,
its EMA, the optimizer, the step, the loss history, the RNG states and the config.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"^step_(\d{8})\.pt$")


class EMA:
    """An exponential moving average of a module's parameters (buffers are copied).

    The decay is warmed up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs and the
    first steps of long ones are not dominated by the random initialization.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = dict(self.model.named_parameters())
        pairs = [(ema_params[n], p) for n, p in model.named_parameters() if p.requires_grad]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1.0 - decay)
        for (_, ema_buffer), (_, buffer) in zip(
            self.model.named_buffers(), model.named_buffers(), strict=True
        ):
            ema_buffer.copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    directory = out_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_checkpoint(out_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**payload, "step": step, "rng": rng_states()}, tmp)
    tmp.replace(path)
    if keep > 0:
        for _, old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    logger.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`; restores the global RNG states too."""
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_states(payload["rng"])
    return payload


def load_for_resume(out_dir: Path, config: dict[str, Any], resume_free: set[str]) -> dict[str, Any] | None:
    """The latest checkpoint under `out_dir` (RNG states restored), or None when there is none.

    Settings that differ from the checkpoint's saved config are logged as a warning, except those
    in `resume_free` (bookkeeping such as progress bars or checkpoint cadence), which a resumed
    run may change without changing the result."""
    path = latest_checkpoint(out_dir)
    if path is None:
        logger.info("resume: no checkpoint under %s, starting from step 0", out_dir)
        return None
    payload = load_checkpoint(path)
    saved = payload.get("config", {})
    changed = sorted(k for k in config if k not in resume_free and saved.get(k, config[k]) != config[k])
    if changed:
        logger.warning("resuming %s with changed settings %s: the run will not replay exactly", path, changed)
    logger.info("resuming from %s at step %d", path, int(payload["step"]))
    return payload


def save_loss_plot(
    losses: list[float],
    path: Path,
    title: str = "DiT flow-matching loss",
    ylabel: str = "MSE (velocity)",
) -> Path:
    """Per-step loss (faint) and its moving average, log scale, as a PNG (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    steps = np.arange(1, len(losses) + 1)
    values = np.asarray(losses, dtype=np.float64)
    if len(values):
        axes.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
        window = max(1, min(100, len(values) // 10))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window}")
        if np.isfinite(values).all() and values.min() > 0 and values.max() / values.min() > 20:
            axes.set_yscale("log")  # long runs span decades; short ones read better linear
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def lr_at(step: int, base_lr: float, warmup: int, schedule: str, total: int) -> float:
    """Learning rate of (0-based) `step`: linear warmup, then constant or cosine decay to 0."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base_lr
