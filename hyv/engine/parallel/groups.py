"""Process groups of sequence parallelism (xDiT's USP layout).

World size N = ulysses_degree x ring_degree. Global rank g = r * ulysses_degree + u:
- the ulysses group of g holds the contiguous ranks r*U .. r*U + U - 1 (all-to-all heads <-> sequence,
  intra-node in practice);
- the ring group of g holds the strided ranks u, u + U, u + 2U, ... (k/v passed around a ring).

The video tokens are sharded contiguously by global rank, so a ulysses group together holds one
contiguous chunk of the sequence and ring rank r holds chunk r.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SPConfig:
    """Degrees of sequence parallelism; ulysses_degree * ring_degree must equal the world size."""

    ulysses_degree: int = 1
    ring_degree: int = 1

    def __post_init__(self) -> None:
        for name in ("ulysses_degree", "ring_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SPConfig.{name} must be a positive int, got {value!r}")

    @property
    def world_size(self) -> int:
        return self.ulysses_degree * self.ring_degree

    def validate(self, world_size: int, num_heads: int | None = None) -> None:
        """Raise ValueError (naming the values) unless this layout fits the world and the model."""
        if self.world_size != world_size:
            raise ValueError(
                f"ulysses_degree={self.ulysses_degree} x ring_degree={self.ring_degree} = "
                f"{self.world_size} != world size {world_size}"
            )
        if num_heads is not None and num_heads % self.ulysses_degree:
            raise ValueError(
                f"ulysses_degree={self.ulysses_degree} must divide the number of attention heads "
                f"num_heads={num_heads}"
            )

    @classmethod
    def auto(cls, world_size: int, num_heads: int) -> SPConfig:
        """Ulysses as wide as the heads allow (cheapest communication), ring for the rest."""
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        ulysses = math.gcd(world_size, num_heads)
        return cls(ulysses_degree=ulysses, ring_degree=world_size // ulysses)


SP_MODES = ("ulysses", "ring", "usp")


def ulysses_degrees(world_size: int, num_heads: int) -> list[int]:
    """The ulysses degrees a world of `world_size` ranks can use with `num_heads` heads."""
    return [u for u in range(1, world_size + 1) if world_size % u == 0 and num_heads % u == 0]


def layout_for(mode: str, world_size: int, num_heads: int, ulysses_degree: int | None = None) -> SPConfig:
    """The (ulysses, ring) layout of a `mode` group: ulysses = heads split over every rank; ring = the
    sequence passed around every rank; usp = `ulysses_degree` (default: as wide as the heads allow)
    inside, ring across. ValueError naming what would work when the model's heads do not split."""
    if mode not in SP_MODES:
        raise ValueError(f"sequence-parallel mode must be one of {', '.join(SP_MODES)}; got {mode!r}")
    if world_size < 1:
        raise ValueError(f"sequence-parallel degree must be >= 1, got {world_size}")
    fits = ulysses_degrees(world_size, num_heads)
    if mode == "ring":
        return SPConfig(ulysses_degree=1, ring_degree=world_size)
    if mode == "ulysses":
        ulysses_degree = world_size
    elif ulysses_degree is None:
        return SPConfig.auto(world_size, num_heads)
    if ulysses_degree not in fits:
        raise ValueError(
            f"a ulysses degree of {ulysses_degree} does not fit {world_size} ranks and a model with "
            f"{num_heads} attention heads (it must divide both); ulysses degrees that fit: {fits} "
            f"(or mode 'ring', or 'usp' with one of those degrees)"
        )
    return SPConfig(ulysses_degree=ulysses_degree, ring_degree=world_size // ulysses_degree)


@dataclass(frozen=True)
class SPGroups:
    """This rank's view of the sequence-parallel layout."""

    config: SPConfig
    rank: int  # global rank
    world_size: int
    ulysses_group: dist.ProcessGroup | None  # None when ulysses_degree == 1
    ring_group: dist.ProcessGroup | None  # None when ring_degree == 1
    ulysses_ranks: tuple[int, ...]  # global ranks of this rank's ulysses group, in order
    ring_ranks: tuple[int, ...]  # global ranks of this rank's ring group, in order
    world_group: dist.ProcessGroup | None = None  # None: the default group

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.config.ulysses_degree

    @property
    def ring_rank(self) -> int:
        return self.rank // self.config.ulysses_degree


def default_backend(device: torch.device | str | None = None) -> str:
    """nccl for CUDA devices (or when CUDA is available and no device is named), else gloo."""
    if device is not None:
        return "nccl" if torch.device(device).type == "cuda" else "gloo"
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group_from_env(
    rank: int | None = None,
    world_size: int | None = None,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> torch.device:
    """Initialise the default process group (idempotent) and return this rank's device.

    Rank / world size come from the arguments, else from torchrun's RANK / WORLD_SIZE /
    LOCAL_RANK / MASTER_ADDR / MASTER_PORT environment. On CUDA the device is cuda:LOCAL_RANK.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", rank if rank is not None else 0))
    backend = backend or default_backend()
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        rank = int(os.environ["RANK"]) if rank is None else rank
        world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
        )
        logger.info("rank %d/%d: process group %s on %s", rank, world_size, backend, device)
    return device


def init_sequence_parallel(
    config: SPConfig, num_heads: int | None = None, timeout: timedelta | None = None
) -> SPGroups:
    """Create the ulysses and ring subgroups of `config` on the initialised default group.

    Collective: every rank must call it, with the same config, in the same order as any other
    group creation. Raises ValueError if the config does not fit the world or the heads.
    timeout: how long the subgroups' collectives wait for a rank (torch's default for new groups
    is 30 minutes, whatever the default group's timeout: a serving group passes its own).
    """
    if not dist.is_initialized():
        raise RuntimeError("init_sequence_parallel needs an initialised default process group")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    config.validate(world_size, num_heads)
    U, R = config.ulysses_degree, config.ring_degree
    my_ulysses: tuple[int, ...] = ()
    my_ring: tuple[int, ...] = ()
    ulysses_group = ring_group = None
    # new_group is collective over the whole world: every rank creates every group, in order.
    for r in range(R):
        ranks = tuple(range(r * U, (r + 1) * U))
        group = dist.new_group(list(ranks), timeout=timeout) if U > 1 else None
        if rank in ranks:
            my_ulysses, ulysses_group = ranks, group
    for u in range(U):
        ranks = tuple(range(u, world_size, U))
        group = dist.new_group(list(ranks), timeout=timeout) if R > 1 else None
        if rank in ranks:
            my_ring, ring_group = ranks, group
    logger.info("rank %d: sequence parallel ulysses %s ring %s", rank, my_ulysses, my_ring)
    return SPGroups(config, rank, world_size, ulysses_group, ring_group, my_ulysses, my_ring)
