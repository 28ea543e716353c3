"""A warm pipeline run by a sequence-parallel group, job after job (the service's worker groups).

Every rank holds the whole pipeline with its DiT and VAE wrapped (`parallelize`); for each job,
rank 0 runs `VideoPipeline.stream` (it alone encodes the MP4) and the others `VideoPipeline.frames`
over the same request, so every rank goes through the same collectives in the same order.

Stopping: the pipeline polls its cancel hook after every denoising step and decoded tile, on every
rank. `StopAgreement` turns rank 0's local answer (a cancel, a lost claim) into the group's answer
with one all-reduce per check, so all the ranks raise `GenerationCancelledError` at the same step:
no rank is left waiting in a collective for a rank that stopped.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from hyv.engine.parallel.dit import SequenceParallelDiT
from hyv.engine.parallel.groups import SPConfig, SPGroups, init_sequence_parallel
from hyv.engine.parallel.vae import SequenceParallelVAE
from hyv.engine.pipeline import VideoPipeline


def parallelize(pipeline: VideoPipeline, config: SPConfig, timeout: timedelta | None = None) -> SPGroups:
    """Create the layout's groups (collective: every rank calls it; `timeout` bounds their
    collectives) and wrap the pipeline's DiT and VAE in place; the pipeline then runs
    sequence-parallel with unchanged calls."""
    groups = init_sequence_parallel(config, pipeline.dit.config.num_heads, timeout)
    pipeline.dit = SequenceParallelDiT(pipeline.dit, groups)  # type: ignore[assignment]
    pipeline.vae = SequenceParallelVAE(pipeline.vae)  # type: ignore[assignment]
    pipeline.step_cache.join_group(groups.world_group)  # every rank computes or skips the same steps
    return groups


class StopAgreement:
    """`agree(local_stop) -> bool`: True on every rank as soon as any rank asks to stop (an
    all-reduce of one flag; on a GPU the flag lives there, as NCCL needs)."""

    def __init__(self, device: torch.device | str, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self._flag = torch.zeros(1, dtype=torch.int32, device=device)

    def __call__(self, local_stop: bool) -> bool:
        self._flag.fill_(1 if local_stop else 0)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(self._flag.item())


def raised_by_collective(exc: BaseException) -> bool:
    """Whether `exc` came out of torch.distributed (a rank that died or timed out shows up so on the
    others: gloo raises a plain RuntimeError, NCCL a DistError)."""
    if isinstance(exc, dist.DistError):
        return True
    marker = f"{os.sep}torch{os.sep}distributed{os.sep}"
    tb = exc.__traceback__
    while tb is not None:
        if marker in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False
