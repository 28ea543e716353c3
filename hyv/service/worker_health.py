"""How a worker's pool process survives faults: a Redis restart, a full disk, a job that runs out
of memory, a model that does not load. hyv.service.worker calls these; the fault tests
(tests/reliability/faults/) drive each with real processes.

- `worker_redis`: the pool process's Redis client retries a lost connection for up to
  REDIS_RIDE_OUT_S (a restart of Redis takes about a second), so a running job pauses at its next
  write instead of failing. Past that the job is left to the claim reaper (its lease expires and
  another worker's beat requeues it); it is never marked failed for Redis' sake.
- `classify_failure`: what a failed job is told, as an API error code: `out_of_memory` (torch's
  CUDA or CPU allocator, Python's MemoryError, PyAV's, or any error raised while the process is
  at its memory limit: C code such as libx264 reports a failed allocation as a generic error),
  `storage_error` (the storage backend, or the disk full, over a quota or file-size limit,
  read-only, refused), `redis_unavailable` (not written: see above), else `internal_error`.
- `limit_job_memory`: `job_memory_limit_mb` on top of the loaded model: on a GPU a cap on
  PyTorch's caching allocator (torch.cuda.set_per_process_memory_fraction), on the CPU on the pool
  process's private writable memory (RLIMIT_DATA: heap and tensors, not the address space that
  thread stacks' guard areas, malloc's per-thread arena reservations or CUDA reserve, which made
  RLIMIT_AS fail jobs far below the limit). A job over it fails with `out_of_memory` and
  `release_memory` hands its memory back before the next job.
- `not_ready_delay`: how long a worker that could not load its model keeps a delivered message
  before handing it back to the queue (Celery's Reject with requeue), so the jobs stay queued for
  a worker that can run them instead of failing here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from hyv.service.settings import Settings
from hyv.service.storage import StorageError

logger = logging.getLogger(__name__)

REDIS_RIDE_OUT_S = 30.0
_BACKOFF_CAP_S = 1.0
# errno values that mean "storage cannot take this write", as opposed to a bug.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
_CPU_OOM_MARKERS = ("can't allocate memory", "not enough memory", "out of memory")
NEAR_LIMIT_BYTES = 64 * 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 2**20
LOAD_RETRY_S = 60.0  # a worker whose model failed to load tries again at most this often


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


def worker_redis(url: str, ride_out_s: float = REDIS_RIDE_OUT_S) -> redis.Redis:
    """A client that retries connection errors with backoff (capped at 1 s) for about ride_out_s."""
    retries = max(1, int(ride_out_s / _BACKOFF_CAP_S) + 5)
    retry = Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=0.05), retries)
    client: redis.Redis = redis.Redis.from_url(
        url,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
    )
    return client


def classify_failure(exc: BaseException) -> Failure:
    """The error code and message a job that raised `exc` fails with."""
    if is_redis_outage(exc):
        return Failure("redis_unavailable", f"Redis unreachable: {exc}")
    if is_out_of_memory(exc):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Failure("out_of_memory", f"the job ran out of memory: {first_line}")
    if isinstance(exc, StorageError):
        return Failure("storage_error", str(exc))
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        name = errno.errorcode.get(exc.errno or 0, "?")
        return Failure("storage_error", f"the video could not be written ({name}): {exc.strerror or exc}")
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        described = f"{type(exc).__name__} ({name}): {exc.strerror or exc}"
    else:
        described = f"{type(exc).__name__}: {exc}"
    if near_memory_limit():  # e.g. libx264 cannot open: a generic error from C code that ran out
        return Failure("out_of_memory", f"the job ran out of memory (at its memory limit): {described}")
    return Failure("internal_error", described)


def is_redis_outage(exc: BaseException) -> bool:
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):  # CUDA's OOM, PyAV's ENOMEM too
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _CPU_OOM_MARKERS)


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


def limit_job_memory(settings: Settings, device: Any) -> dict[str, int] | None:
    """Apply `job_memory_limit_mb` on top of what the loaded model uses now; returns what was set
    (None when there is no limit)."""
    if not settings.job_memory_limit_mb:
        return None
    import torch

    extra = settings.job_memory_limit_mb * 2**20
    if getattr(device, "type", str(device)).startswith("cuda"):
        total = torch.cuda.get_device_properties(device).total_memory
        used = torch.cuda.memory_reserved(device)
        fraction = min(1.0, (used + extra) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        found = {"cuda_limit_bytes": int(fraction * total), "cuda_reserved_bytes": used}
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


def load_pipeline(settings: Settings) -> Any:
    """The settings' model on its device (a GPU if there is one), with the job memory limit set."""
    import time

    import torch

    from hyv.engine.pipeline import PipelineOptions, VideoPipeline, default_device_and_dtype
    from hyv.models.checkpoint_io import parse_dtype

    start = time.perf_counter()
    device, dtype = default_device_and_dtype()
    device = settings.device or device
    if not device.startswith("cuda"):
        dtype = torch.float32  # bf16 is the default on GPUs only
    options = PipelineOptions(device=device, dtype=parse_dtype(settings.dtype) or dtype)
    pipeline = VideoPipeline.from_dir(settings.weights, options, settings.text_encoder)
    limit_job_memory(settings, pipeline.device)
    logger.info(
        "pipeline loaded",
        extra={
            "weights": str(settings.weights),
            "device": options.device,
            "load_s": round(time.perf_counter() - start, 3),
        },
    )
    return pipeline


def memory_usage(pipeline: Any) -> dict[str, int]:
    """What the worker's heartbeat reports: the CUDA allocator's counters on a GPU, else the
    process's resident memory."""
    import torch

    if pipeline is not None and pipeline.device.type == "cuda":
        device = pipeline.device
        return {
            "allocated": torch.cuda.memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device),
            "peak_allocated": torch.cuda.max_memory_allocated(device),
        }
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return {"process_rss": pages * os.sysconf("SC_PAGE_SIZE")}
    except (OSError, ValueError, IndexError):
        return {}


def abort_quietly(writer: Any) -> None:
    """writer.abort(), logging rather than raising (the disk that failed a write may fail this too)."""
    try:
        writer.abort()
    except Exception:
        logger.exception("could not remove a failed job's partial video")


def not_ready_delay(settings: Settings) -> float:
    """How long a worker without its model holds a message before handing it back: long enough
    not to spin on the queue, short enough that a good worker soon gets the job."""
    return min(5.0, max(0.2, settings.worker_heartbeat_seconds))
