"""What a job that raised is told: an API error code and a message (hyv.service.job_runner fails the
job with it; the fault tests in tests/reliability/faults/ drive each case with real processes).

- `out_of_memory`: torch's CUDA or CPU allocator, Python's MemoryError, PyAV's, or any error raised
  while the process is at its memory limit (hyv.service.job_memory): C code such as libx264
  reports a failed allocation as a generic error.
- `storage_error`: the storage backend, or the disk full, over a quota or file-size limit,
  read-only, refused.
- `redis_unavailable`: never written. The pool process's Redis client rides out a restart
  (hyv.service.worker_process.worker_redis); past that the job is left to the claim reaper (its
  lease expires and another worker's beat requeues it): Redis going away is not the job's fault.
- `worker_group_failed`: a rank of a sequence-parallel worker group died or hung; the job is
  requeued once before it fails with this code.
- else `internal_error`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import redis

from hyv.service.job_memory import near_memory_limit
from hyv.service.storage import StorageError

# errno values that mean "storage cannot take this write", as opposed to a bug.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)
_CPU_OOM_MARKERS = ("can't allocate memory", "not enough memory", "out of memory")


class WorkerGroupError(RuntimeError):
    """A worker group lost a rank (it died, hung past the collective timeout, or could not start):
    not the job's fault. The job is requeued once (`worker_group_failed` after that) and the group
    restarts (hyv.service.worker_group)."""


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


def classify_failure(exc: BaseException) -> Failure:
    """The error code and message a job that raised `exc` fails with."""
    if is_redis_outage(exc):
        return Failure("redis_unavailable", f"Redis unreachable: {exc}")
    if isinstance(exc, WorkerGroupError):
        return Failure("worker_group_failed", f"the worker group failed: {exc}")
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
