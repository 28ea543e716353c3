"""Distributed joint attention for sequence parallelism: Ulysses, Ring, and both (USP).

Every rank holds a contiguous shard of the (padded) video tokens and ALL the text tokens. The
blocks call `hyv.models.ops.attention(q, k, v, key_mask)` with q/k/v (B, Lv+Lt, H, D) = [local video
shard; all text]; `USPAttention` is the drop-in implementation (`hyv.models.ops.use_attention`):

1. Ulysses (group of U ranks): one all-to-all turns the video q/k/v (B, Lv, H, D) into
   (B, U*Lv, H/U, D) - the whole chunk of the ulysses group, H/U heads. Text is replicated, so each
   rank just takes its own head slice of the text q/k/v.
2. Ring (group of R ranks, one per chunk): each rank keeps its video queries and passes its video
   k/v block around the ring with batched isend/irecv (overlapped with the block's compute);
   partial results are merged with the log-sum-exp in fp32. The text keys are attended once,
   locally (never passed around). The text queries attend each rank's local video block; those R
   partials are all-gathered and merged in ring order, so every rank gets the same text output.
   With R == 1 the local attention runs on the regular backend (`hyv.kernels.attention`).
3. Back through Ulysses: all-to-all for the video output, all-gather over heads for the text.

Padded video tokens (the count rounded up to a multiple of the world size) are masked as keys;
their query rows are garbage and are dropped by the caller. Padded text keys are masked via the
key mask the block passes. Inference only: the collectives are not differentiable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hyv import kernels
from hyv.engine.parallel.groups import SPGroups

# Upper bound on the fp32 score tile of one partial attention (elements), to bound its memory.
_MAX_SCORE_ELEMENTS = 1 << 26


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q (B, Lq, H, D) over k/v (B, Lk, H, D) with key_valid (B, Lk) bool.

    Returns (out (B, Lq, H, D) fp32, lse (B, Lq, H) fp32). A row with no valid key has lse = -inf
    and out = 0, so it carries no weight when merged.
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    if Lk == 0:
        return q.new_zeros(q.shape, dtype=torch.float32), q.new_full(
            (B, Lq, H), float("-inf"), dtype=torch.float32
        )
    scale = D**-0.5
    k32, v32 = k.float(), v.float()
    invalid = ~key_valid.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Lk)
    chunk = max(1, _MAX_SCORE_ELEMENTS // max(1, B * H * Lk))
    outs, lses = [], []
    for start in range(0, Lq, chunk):
        qc = q[:, start : start + chunk].float()
        s = torch.einsum("bqhd,bkhd->bhqk", qc, k32) * scale  # (B, H, lq, Lk)
        s = s.masked_fill(invalid, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (B, H, lq); -inf where every key is masked
        p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
        outs.append(torch.einsum("bhqk,bkhd->bqhd", p, v32))  # (B, lq, H, D)
        lses.append(lse.transpose(1, 2))  # (B, lq, H)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def merge_partials(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax attentions over disjoint key sets (online softmax), fp32.

    out (B, L, H, D), lse (B, L, H). Rows where both lse are -inf stay zero with lse -inf."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), 0.0, lse)
    w_a = torch.exp(lse_a - safe)[..., None]  # (B, L, H, 1)
    w_b = torch.exp(lse_b - safe)[..., None]
    return out_a * w_a + out_b * w_b, lse


# ---------------------------------------------------------------------------------------------
# Ulysses communication


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup, degree: int) -> torch.Tensor:
    """(S, B, Lv, H, D) sequence shards -> (S, B, degree*Lv, H/degree, D) head shards (all-to-all).

    S stacks several tensors (q, k, v) into one collective."""
    S, B, Lv, H, D = x.shape
    send = x.reshape(S, B, Lv, degree, H // degree, D).permute(3, 0, 1, 2, 4, 5).contiguous()
    recv = torch.empty_like(send)  # recv[s]: rank s's sequence shard, my heads
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4, 5).reshape(S, B, degree * Lv, H // degree, D)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup, degree: int) -> torch.Tensor:
    """(B, degree*Lv, h, D) head shard -> (B, Lv, degree*h, D) sequence shard (all-to-all)."""
    B, L, h, D = x.shape
    send = x.reshape(B, degree, L // degree, h, D).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)  # recv[s]: rank s's heads, my sequence shard
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(B, L // degree, degree * h, D)


def gather_heads(x: torch.Tensor, group: dist.ProcessGroup, degree: int) -> torch.Tensor:
    """(B, L, h, D) on each rank -> (B, L, degree*h, D), heads in group-rank order (all-gather)."""
    parts = [torch.empty_like(x) for _ in range(degree)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=2)


# ---------------------------------------------------------------------------------------------
# Ring attention


def ring_attention(
    q_img: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    q_txt: torch.Tensor,
    k_txt: torch.Tensor,
    v_txt: torch.Tensor,
    txt_valid: torch.Tensor,
    block_valid: torch.Tensor,
    group: dist.ProcessGroup,
    ring_ranks: tuple[int, ...],
    ring_rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint attention of [video chunk; text] queries over [all video chunks; text] keys.

    q/k/v_img (B, C, h, D): this rank's video chunk; q/k/v_txt (B, Lt, h, D): all text (identical on
    every ring rank); txt_valid (B, Lt); block_valid (R, C): valid video keys of each ring rank's
    chunk. Returns (video out (B, C, h, D), text out (B, Lt, h, D)) in q's dtype; the text output
    is bit-identical on every ring rank.
    """
    R = len(ring_ranks)
    B = q_img.shape[0]
    nxt, prv = ring_ranks[(ring_rank + 1) % R], ring_ranks[(ring_rank - 1) % R]

    def valid(src: int) -> torch.Tensor:
        return block_valid[src].expand(B, -1)  # (B, C)

    # Text queries: the local video block only, then merged over the ring in canonical order.
    t_out, t_lse = attention_with_lse(q_txt, k_img, v_img, valid(ring_rank))  # (B, Lt, h, D), (B, Lt, h)
    packed = torch.cat([t_out, t_lse[..., None]], dim=-1).contiguous()  # (B, Lt, h, D+1)
    gathered = [torch.empty_like(packed) for _ in range(R)]
    gather_work = dist.all_gather(gathered, packed, group=group, async_op=True)

    # Video queries: text keys once (locally), then every video block as it comes around the ring.
    out, lse = attention_with_lse(q_img, k_txt, v_txt, txt_valid)
    kv = torch.stack([k_img, v_img]).contiguous()  # (2, B, C, h, D)
    for step in range(R):
        requests = []
        if step < R - 1:
            incoming = torch.empty_like(kv)
            ops = [
                dist.P2POp(dist.isend, kv, nxt, group=group),
                dist.P2POp(dist.irecv, incoming, prv, group=group),
            ]
            requests = dist.batch_isend_irecv(ops)
        src = (ring_rank - step) % R  # whose chunk kv holds now
        out, lse = merge_partials(out, lse, *attention_with_lse(q_img, kv[0], kv[1], valid(src)))
        for request in requests:
            request.wait()
        if step < R - 1:
            kv = incoming

    assert gather_work is not None
    gather_work.wait()
    txt_out, txt_lse = attention_with_lse(q_txt, k_txt, v_txt, txt_valid)
    for part in gathered:  # ring order: the same arithmetic on every rank
        txt_out, txt_lse = merge_partials(txt_out, txt_lse, part[..., :-1], part[..., -1])
    return out.to(q_img.dtype), txt_out.to(q_txt.dtype)


# ---------------------------------------------------------------------------------------------
# USP: Ulysses inside, Ring across


class USPAttention:
    """`hyv.models.ops.AttentionFn` for one sharded forward: q/k/v (B, Lv+Lt, H, D) with the local video
    shard (Lv tokens, global shard index = rank) first, then all the text tokens; key_padding_mask
    (B, Lv+Lt) - only its text part is read (the video padding is known from the layout)."""

    def __init__(self, groups: SPGroups, local_video: int, num_video: int, device: torch.device) -> None:
        self.groups = groups
        self.local_video = local_video  # Lv tokens per rank (padded)
        U, R = groups.config.ulysses_degree, groups.config.ring_degree
        chunk = U * local_video  # video tokens of one ulysses group = one ring chunk
        positions = torch.arange(R * chunk, device=device)
        self.block_valid = (positions < num_video).reshape(R, chunk)  # (R, C) bool
        self.chunk_valid = self.block_valid[groups.ring_rank]  # (C,) this rank's chunk
        self._mask_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _chunk_mask(self, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """[chunk video valid; text valid] (B, C+Lt), built once per block mask object (the blocks
        all pass the same one), which keeps the varlen backends' metadata cache warm."""
        if self._mask_cache is None or self._mask_cache[0] is not key_padding_mask:
            txt_valid = key_padding_mask[:, self.local_video :].to(torch.bool)
            video = self.chunk_valid.expand(txt_valid.shape[0], -1)
            self._mask_cache = (key_padding_mask, torch.cat([video, txt_valid], dim=1))
        return self._mask_cache[1]

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        g, Lv = self.groups, self.local_video
        U, R = g.config.ulysses_degree, g.config.ring_degree
        B, L, H, _ = q.shape
        if key_padding_mask is None:
            key_padding_mask = torch.ones(B, L, dtype=torch.bool, device=q.device)
        txt_valid = key_padding_mask[:, Lv:]  # (B, Lt)
        qkv_img = torch.stack([q[:, :Lv], k[:, :Lv], v[:, :Lv]])  # (3, B, Lv, H, D)
        qkv_txt = torch.stack([q[:, Lv:], k[:, Lv:], v[:, Lv:]])  # (3, B, Lt, H, D)
        if U > 1:
            assert g.ulysses_group is not None
            qkv_img = seq_to_heads(qkv_img, g.ulysses_group, U)  # (3, B, C, H/U, D)
            h = H // U
            qkv_txt = qkv_txt[:, :, :, g.ulysses_rank * h : (g.ulysses_rank + 1) * h]  # (3, B, Lt, H/U, D)
        C = qkv_img.shape[2]

        if R > 1:
            assert g.ring_group is not None
            q_img, k_img, v_img = qkv_img.unbind(0)
            q_txt, k_txt, v_txt = qkv_txt.unbind(0)
            out_img, out_txt = ring_attention(
                q_img,
                k_img,
                v_img,
                q_txt,
                k_txt,
                v_txt,
                txt_valid.to(torch.bool),
                self.block_valid,
                g.ring_group,
                g.ring_ranks,
                g.ring_rank,
            )
        else:
            joint = torch.cat([qkv_img, qkv_txt], dim=2)  # (3, B, C+Lt, h, D)
            out = kernels.attention(joint[0], joint[1], joint[2], self._chunk_mask(key_padding_mask))
            out_img, out_txt = out[:, :C], out[:, C:]

        if U > 1:
            assert g.ulysses_group is not None
            out_img = heads_to_seq(out_img, g.ulysses_group, U)  # (B, Lv, H, D)
            out_txt = gather_heads(out_txt, g.ulysses_group, U)  # (B, Lt, H, D)
        return torch.cat([out_img, out_txt], dim=1)  # (B, Lv+Lt, H, D)
