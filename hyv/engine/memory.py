"""Peak memory of one job: CUDA allocator peak on GPU, the process's peak RSS on CPU."""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import torch


class PeakMemory:
    """Starts measuring at construction; `bytes` / `kind` are valid after `stop()`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0
        self.kind = ""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.kind = "cuda_max_allocated"
        elif _reset_linux_peak_rss():
            self.kind = "process_peak_rss"
        else:
            self.kind = "process_peak_rss_since_start"

    def stop(self) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _peak_rss_bytes()


def _reset_linux_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def release(device: torch.device, failed: bool = False) -> None:
    """Give cached memory back after a job. After a cancelled or failed one, the exception's
    traceback holds the stage frames (and their tensors) in reference cycles: collect them first."""
    if failed:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
