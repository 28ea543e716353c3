"""The torch devices this machine has, and a check of a device name against them, made before any
weights load (`hyv generate --device`, `hyv worker --device`): asking for CUDA where there is none
is one clear sentence, not a traceback from deep inside the model's `.to()`."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """ "cpu", then every visible CUDA device ("cuda:0", ...), then "mps" where it works."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(name: str) -> torch.device:
    """The device `name` stands for; ValueError (one line, listing what this machine has) when it
    is not a device name, or names a CUDA device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"{name!r} is not a device name (cpu, cuda, cuda:N); available: {', '.join(available_devices())}"
        ) from exc
    if device.type == "cuda":
        available = ", ".join(available_devices())
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise ValueError(f"CUDA is not available: {why}; available: {available}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"there is no {device}: {count} CUDA device(s) visible; available: {available}")
    return device
