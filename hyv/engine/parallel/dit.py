"""Sequence-parallel forward of `HunyuanVideoDiT` (every rank returns the full output).

    embed (replicated: the text refiner and the conditioning are small)
    -> pad the video tokens to a multiple of the world size N, keep this rank's contiguous shard
       (B, Lv = ceil(Li / N), D) and the matching rows of the RoPE tables
    -> run_blocks on [video shard; all text] with `USPAttention` plugged into hyv.models.ops
    -> final layer on the local video tokens -> all-gather over the world -> drop the padding
    -> unpatchify.

The blocks are untouched: the sharding lives here (gpt-fast style), the attention is swapped
through `hyv.models.ops.use_attention`.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hyv.engine.parallel.attention import USPAttention
from hyv.engine.parallel.groups import SPGroups
from hyv.models import ops
from hyv.models.dit import HunyuanVideoDiT

logger = logging.getLogger(__name__)


def shard_video(
    img: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad the Li video tokens to N * Lv and take shard `rank`.

    img (B, Li, D), cos/sin (Li, Dh) -> img (B, Lv, D), cos/sin (Lv, Dh), valid (Lv,) bool.
    Padded tokens are zeros with identity rotation (cos 1, sin 0) and valid False."""
    Li = img.shape[1]
    Lv = math.ceil(Li / world_size)
    pad = Lv * world_size - Li
    img = F.pad(img, (0, 0, 0, pad))  # (B, N*Lv, D)
    cos = torch.cat([cos, cos.new_ones(pad, cos.shape[1])])  # (N*Lv, Dh)
    sin = torch.cat([sin, sin.new_zeros(pad, sin.shape[1])])
    rows = slice(rank * Lv, (rank + 1) * Lv)
    valid = torch.arange(rank * Lv, (rank + 1) * Lv, device=img.device) < Li  # (Lv,)
    return img[:, rows], cos[rows], sin[rows], valid


def gather_video(x: torch.Tensor, num_video: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather the shards (B, Lv, P) of every rank in rank order -> (B, num_video, P)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)[:, :num_video]


@torch.no_grad()
def sp_forward(
    model: HunyuanVideoDiT,
    groups: SPGroups,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    pooled_projections: torch.Tensor,
    guidance: torch.Tensor | None = None,
) -> torch.Tensor:
    """`model.forward` over the sequence-parallel group: same arguments (identical on every rank),
    same output (B, C_out, T, H, W) on every rank. Inference only (no autograd through the
    collectives)."""
    if groups.config.ulysses_degree > 1:
        groups.config.validate(groups.world_size, model.config.num_heads)
    s = model.embed(
        hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections, guidance
    )
    B, Li, _ = s.img.shape
    img, cos, sin, valid = shard_video(s.img, s.cos, s.sin, groups.rank, groups.world_size)
    Lv = img.shape[1]
    key_mask = torch.cat([valid.expand(B, -1), s.key_mask[:, Li:]], dim=1)  # (B, Lv+Lt)
    attention = USPAttention(groups, Lv, Li, img.device)
    with ops.use_attention(attention):
        x = model.run_blocks(img, s.txt, s.vec, cos, sin, key_mask)  # (B, Lv+Lt, D)
    out = model.final_layer(x[:, :Lv], s.vec)  # (B, Lv, C_out*pt*ph*pw)
    return model.unpatchify(gather_video(out, Li, groups.world_group), s.grid)


class SequenceParallelDiT(nn.Module):
    """Drop-in replacement of a `HunyuanVideoDiT` (same call, same output on every rank) that runs
    it sequence-parallel over `groups`. Exposes `config` and the wrapped model's parameters."""

    def __init__(self, model: HunyuanVideoDiT, groups: SPGroups) -> None:
        super().__init__()
        groups.config.validate(groups.world_size, model.config.num_heads)
        self.model = model
        self.groups = groups
        self.config = model.config

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.groups.world_size == 1:
            return self.model(
                hidden_states,
                timestep,
                encoder_hidden_states,
                encoder_attention_mask,
                pooled_projections,
                guidance,
            )
        return sp_forward(
            self.model,
            self.groups,
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance,
        )
