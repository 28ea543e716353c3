"""Where the pipeline's three components live between jobs and where each one runs.

    text encoder   device: lives and runs on the device (the 13B's LLaMA: 16 GB beside the DiT)
                   offload: lives on the CPU, visits the device to encode each job's prompt
                   cpu: lives and runs on the CPU; only its embeddings (a few MB) move
    model offload  every component lives on the CPU and visits the device only while it runs
                   (text encoder, then DiT, then VAE), as diffusers' enable_model_cpu_offload and
                   Tencent's --use-cpu-offload do; the device then holds one component at a time

`plan_placement` turns the options into a `ComponentPlacement` per component; `Placement` carries
the plan out: `with placement.running("dit"):` brings the DiT to where it runs and sends it home
afterwards, also when the job fails or is cancelled inside the block. The moves it made in the
current job are in `moves`, and `location` says where each component is now (tests read both:
on a CPU-only machine the device is the CPU and a move changes no tensor).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from hyv.engine.memory_options import TEXT_ENCODER_PLACEMENTS

logger = logging.getLogger(__name__)

Where = Literal["device", "cpu"]
COMPONENTS = ("text_encoder", "dit", "vae")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class ComponentPlacement:
    home: Where  # where it stays between uses
    runs_on: Where  # where it computes

    @property
    def visits(self) -> bool:
        """Whether each use moves it from its home to where it runs and back."""
        return self.home != self.runs_on


def plan_placement(
    text_encoder: str = "device", model_offload: bool = False
) -> dict[str, ComponentPlacement]:
    """The placement of each component for these options."""
    if text_encoder not in TEXT_ENCODER_PLACEMENTS:
        choices = ", ".join(TEXT_ENCODER_PLACEMENTS)
        raise ValueError(f"text encoder placement must be one of {choices}, got {text_encoder!r}")
    resident = ComponentPlacement("device", "device")
    visiting = ComponentPlacement("cpu", "device")
    encoder = {
        "device": visiting if model_offload else resident,
        "offload": visiting,
        "cpu": ComponentPlacement("cpu", "cpu"),
    }[text_encoder]
    model = visiting if model_offload else resident
    return {"text_encoder": encoder, "dit": model, "vae": model}


@dataclass(frozen=True)
class Move:
    component: str
    to: Where
    seconds: float


Mover = Callable[[torch.device], object]


class Placement:
    """Carries out a placement plan. `movers[name](device)` moves one component."""

    def __init__(
        self, plan: dict[str, ComponentPlacement], device: torch.device, movers: dict[str, Mover]
    ) -> None:
        if set(plan) != set(movers):
            raise ValueError(f"plan covers {sorted(plan)}, movers cover {sorted(movers)}")
        self.plan = plan
        self.device = device
        self._movers = movers
        self.location: dict[str, Where] = {}
        self.moves: list[Move] = []  # this job's moves (start_job clears them)
        for name, placement in plan.items():
            self._move(name, placement.home)
        self.moves.clear()  # the initial placement is not a job's

    def torch_device(self, where: Where) -> torch.device:
        return self.device if where == "device" else CPU

    def runs_on(self, name: str) -> torch.device:
        return self.torch_device(self.plan[name].runs_on)

    def start_job(self) -> None:
        self.moves.clear()

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[torch.device]:
        """`name` where it runs for the block, home again after it (whatever happens inside);
        yields the device it runs on."""
        placement = self.plan[name]
        if not placement.visits:
            yield self.torch_device(placement.runs_on)
            return
        try:
            self._move(name, placement.runs_on)  # inside try: a move that fails halfway is undone
            yield self.torch_device(placement.runs_on)
        finally:
            self._move(name, placement.home)

    def _move(self, name: str, where: Where) -> None:
        start = time.perf_counter()
        self._movers[name](self.torch_device(where))
        self.location[name] = where
        seconds = time.perf_counter() - start
        self.moves.append(Move(name, where, seconds))
        logger.debug("%s to %s (%s) in %.3f s", name, where, self.torch_device(where), seconds)

    def visiting_bytes(self, sizes: dict[str, int]) -> int:
        """The most weight bytes a job brings to the device at once: the largest visiting
        component (`sizes`: bytes per component)."""
        return max(
            (sizes[name] for name, p in self.plan.items() if p.visits and p.runs_on == "device"), default=0
        )
