"""A job's memory: the limit a job runs under, what is given back after one ran out, what the
heartbeat reports.

- `limit_job_memory`: `job_memory_limit_mb` on top of the loaded model: on a GPU a cap on
  PyTorch's caching allocator (torch.cuda.set_per_process_memory_fraction), on the CPU on the pool
  process's private writable memory (RLIMIT_DATA: heap and tensors, not the address space that
  thread stacks' guard areas, malloc's per-thread arena reservations or CUDA reserve, which made
  RLIMIT_AS fail jobs far below the limit). A job over it fails with `out_of_memory` and
  `release_memory` hands its memory back before the next job.
- `near_memory_limit`: whether this process is at its limit (hyv.service.job_failures).
- `memory_usage`: what the worker's heartbeat reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import resource
from pathlib import Path
from typing import Any

from hyv.service.settings import Settings

logger = logging.getLogger(__name__)

NEAR_LIMIT_BYTES = 64 * 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 2**20


def release_memory(device: Any) -> None:
    """After an out-of-memory job: collect its tensors and give cached CUDA blocks back."""
    import torch

    gc.collect()
    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError, AttributeError):  # glibc: give freed heap pages back
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def limit_job_memory(settings: Settings, device: Any, visiting_bytes: int = 0) -> dict[str, int] | None:
    """Apply `job_memory_limit_mb` on top of what the loaded model uses now; returns what was set
    (None when there is no limit). `visiting_bytes`: weights that each job brings onto the GPU (an
    offloaded text encoder or model, hyv.engine.placement), counted as the model's."""
    if not settings.job_memory_limit_mb:
        return None
    import torch

    extra = settings.job_memory_limit_mb * 2**20
    if getattr(device, "type", str(device)).startswith("cuda"):
        total = torch.cuda.get_device_properties(device).total_memory
        reserved = torch.cuda.memory_reserved(device)
        fraction = min(1.0, (reserved + visiting_bytes + extra) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        found = {
            "cuda_limit_bytes": int(fraction * total),
            "cuda_reserved_bytes": reserved,
            "visiting_weight_bytes": visiting_bytes,
        }
    else:
        _mmap_big_allocations()
        used = data_bytes()
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        found = {"data_limit_bytes": soft, "data_bytes": used}
    logger.info("job memory limited", extra={"job_memory_limit_mb": settings.job_memory_limit_mb, **found})
    return found


def _mmap_big_allocations() -> None:
    """glibc: allocations over 1 MiB (tensors) from their own mmap, handed back to the system when
    freed. By default glibc raises that threshold as large blocks are freed and then keeps them in
    its heap, which still counts against RLIMIT_DATA: after a job that ran out of memory, the next
    ones would have less room than the limit promises."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def near_memory_limit(margin_bytes: int = NEAR_LIMIT_BYTES) -> bool:
    """Whether this process's private writable memory is within margin_bytes of its RLIMIT_DATA:
    called while a failed job's memory is still held, it tells an allocation failure inside C
    code (which surfaces as a generic error) from a bug."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY:
        return False
    return data_bytes() > soft - margin_bytes


def data_bytes() -> int:
    """VmData: the private writable memory RLIMIT_DATA counts (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmData in /proc/self/status")


def memory_usage(pipeline: Any) -> dict[str, int]:
    """What the worker's heartbeat reports: the process's resident memory (`process_rss`), and on
    a GPU the CUDA allocator's counters."""
    import torch

    found: dict[str, int] = {}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        found["process_rss"] = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    if pipeline is not None and pipeline.device.type == "cuda":
        device = pipeline.device
        found["allocated"] = torch.cuda.memory_allocated(device)
        found["reserved"] = torch.cuda.memory_reserved(device)
        found["peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return found
