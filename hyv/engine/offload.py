"""Block-wise offload for GPUs smaller than the DiT: blocks live on the CPU and visit the device
one at a time. Applied from outside with hooks; the model code is unchanged.

The DiT's other parts (embedders, final layer: a few hundred MB on the 13B) are its resident
parts; `move_resident` places them (hyv.engine.placement moves them with the model offload)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hyv.models import HunyuanVideoDiT

BLOCK_LISTS = ("double_blocks", "single_blocks")


def offload_blocks(model: HunyuanVideoDiT, device: torch.device, dtype: torch.dtype) -> None:
    """Keep the resident parts on `device`; move each block there only for its forward."""
    model.to(dtype=dtype)
    move_resident(model, device)
    for block in blocks(model):
        block.to("cpu")
        block.register_forward_pre_hook(_to_device_hook(device))
        block.register_forward_hook(_to_cpu_hook)


def blocks(model: HunyuanVideoDiT) -> list[nn.Module]:
    return [*model.double_blocks, *model.single_blocks]


def move_resident(model: HunyuanVideoDiT, device: torch.device | str) -> None:
    """Move everything but the blocks to `device`."""
    for name, child in model.named_children():
        if name not in BLOCK_LISTS:
            child.to(device)


def largest_block_bytes(model: HunyuanVideoDiT) -> int:
    """The weights one block brings to the device while it runs."""
    return max(sum(p.numel() * p.element_size() for p in block.parameters()) for block in blocks(model))


def _to_device_hook(device: torch.device) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        module.to(device, non_blocking=True)

    return hook


def _to_cpu_hook(module: nn.Module, args: Any, output: Any) -> None:
    module.to("cpu", non_blocking=True)
