"""What one skipped step saves, counted on the meta device (no weights, no GPU).

One DiT forward is traced as hyv.engine.meta_trace traces it (flash attention's FLOPs, the PyTorch
references' ops) with `FlopCounterMode`'s per-module counts; a teacache skip saves the whole block
stack (it still pays the first block's modulation and a LayerNorm, counted here), a first-block
skip the stack but its first block.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hyv.engine.meta_trace import PRESET, TEXT_TOKENS, FlashAttentionOnMeta, build_meta_dit, latent_shape
from hyv.kernels import _common

_BLOCK = re.compile(r"\.(double|single)_blocks\.(\d+)$")


@dataclass(frozen=True)
class SkipFlops:
    preset: str
    height: int
    width: int
    frames: int
    video_tokens: int
    text_tokens: int
    step_flops: int  # one DiT forward, batch 1
    stack_flops: int  # its double + single blocks
    first_block_flops: int  # the first double block
    teacache_check_flops: int  # the first block's modulation (what teacache adds to every step)
    saved_teacache: int  # per skipped step
    saved_first_block: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["saved_teacache_share"] = round(self.saved_teacache / self.step_flops, 4)
        data["saved_first_block_share"] = round(self.saved_first_block / self.step_flops, 4)
        return data


def skip_flops(
    height: int = 720,
    width: int = 1280,
    frames: int = 129,
    preset: str = PRESET,
    text_tokens: int = TEXT_TOKENS,
) -> SkipFlops:
    """FLOPs of one forward of `preset` at this video size, and what each kind of skip saves."""
    model = build_meta_dit(preset)
    c = model.config
    latent = latent_shape(height, width, frames, c.in_channels)
    meta, dtype = torch.device("meta"), torch.bfloat16
    counter = FlopCounterMode(display=False)
    was_enabled = _common.fused_enabled()
    with contextlib.ExitStack() as stack:
        _common.set_fused_enabled(False)  # the references' ops: FlopCounterMode counts what they call
        stack.callback(_common.set_fused_enabled, was_enabled)
        stack.enter_context(torch.inference_mode())
        stack.enter_context(FlashAttentionOnMeta())
        stack.enter_context(counter)
        x = torch.empty(1, *latent, dtype=dtype, device=meta)
        t = torch.empty(1, dtype=dtype, device=meta)
        text = torch.empty(1, text_tokens, c.text_dim, dtype=dtype, device=meta)
        mask = torch.ones(1, text_tokens, dtype=torch.bool, device=meta)
        pooled = torch.empty(1, c.pooled_dim, dtype=dtype, device=meta)
        guidance = torch.empty(1, dtype=dtype, device=meta) if c.guidance_embed else None
        model(x, t, text, mask, pooled, guidance)
    counts = counter.get_flop_counts()
    per_module = {name: sum(ops.values()) for name, ops in counts.items()}
    blocks = {name: n for name, n in per_module.items() if _BLOCK.search(name)}
    first = next(n for name, n in blocks.items() if name.endswith(".double_blocks.0"))
    modulation = next((n for name, n in per_module.items() if name.endswith(".double_blocks.0.img_mod")), 0)
    stack_flops = sum(blocks.values())
    video_tokens = math.prod(n // p for n, p in zip(latent[1:], c.patch_size, strict=True))
    return SkipFlops(
        preset=preset,
        height=height,
        width=width,
        frames=frames,
        video_tokens=video_tokens,
        text_tokens=text_tokens,
        step_flops=per_module["Global"],
        stack_flops=stack_flops,
        first_block_flops=first,
        teacache_check_flops=modulation,
        saved_teacache=stack_flops - modulation,
        saved_first_block=stack_flops - first,
    )
