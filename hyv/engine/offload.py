"""Block-wise offload for GPUs smaller than the DiT: blocks live on the CPU and visit the device
one at a time. Applied from outside with hooks; the model code is unchanged."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hyv.models import HunyuanVideoDiT


def offload_blocks(model: HunyuanVideoDiT, device: torch.device, dtype: torch.dtype) -> None:
    """Keep the embedders and final layer on `device`; move each block there only for its forward."""
    model.to(dtype=dtype)
    blocks: list[nn.Module] = [*model.double_blocks, *model.single_blocks]
    for name, child in model.named_children():
        if name not in ("double_blocks", "single_blocks"):
            child.to(device)
    for block in blocks:
        block.to("cpu")
        block.register_forward_pre_hook(_to_device_hook(device))
        block.register_forward_hook(_to_cpu_hook)


def _to_device_hook(device: torch.device) -> Any:
    def hook(module: nn.Module, args: Any) -> None:
        module.to(device, non_blocking=True)

    return hook


def _to_cpu_hook(module: nn.Module, args: Any, output: Any) -> None:
    module.to("cpu", non_blocking=True)
