"""A run's claim token, and telling from a token alone that the worker that held it is gone.

A claim's token (hyv.service.job_claims) names the run that holds the job:

    {host}:{pid}:{boot}.{pid namespace}.{start}.{parent pid}.{parent start}:{task id}

the pool process (`{host}:{pid}`, the worker's name in the job record and the registry), where that
process lives (the kernel's boot id and its pid namespace, so a pid is read only where it means the
same process: two containers sharing a host name have separate pid namespaces), when it and its
parent (the worker's main process) started (start times in clock ticks since boot, so a reused pid
is told apart), and the Celery task id last (JobRecords.fail_dead_run matches `:{task id}`).

A worker starting on the machine where a killed worker ran sees at once that both of the token's
processes are gone and takes the job back (hyv.service.worker_process.requeue_orphans) instead of
waiting out the claim's lease. While the main process lives, it accounts for a pool process it lost
(a run killed at the hard time limit is failed, not rerun; the OOM killer's victim is redelivered),
so a lost pool process alone is left to the lease, as is everything `process_is_gone` cannot check
here: another machine, boot or pid namespace, a token in another format, no /proc.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

UNKNOWN = "-"  # the process part of a token made where /proc cannot say (never judged gone)


def run_token(worker: str, task_id: str) -> str:
    """The claim token of a run of this process: `worker` is its `{host}:{pid}` name."""
    return f"{worker}:{process_stamp()}:{task_id}"


def process_stamp(pid: int | None = None) -> str:
    """`{boot id}.{pid namespace}.{start}.{parent pid}.{parent start}` of process `pid` (default: this
    one), as seen from here; UNKNOWN where /proc does not tell. Not cached: a forked pool process is
    another process."""
    found = _stat(pid or os.getpid())
    boot, namespace = _boot_id(), _pid_namespace()
    if found is None or boot is None or namespace is None:
        return UNKNOWN
    start, parent = found
    parent_start = (_stat(parent) or ("0", 0))[0]
    return f"{boot}.{namespace}.{start}.{parent}.{parent_start}"


def process_is_gone(token: str) -> bool:
    """True only when `token` names a pool process of this machine and pid namespace that no longer
    runs (its pid is free, or another process's now) and whose parent no longer runs either."""
    parts = token.rsplit(":", 3)
    if len(parts) != 4:
        return False
    host, pid, stamp, _ = parts
    fields = stamp.split(".")
    if host != socket.gethostname() or not pid.isdigit() or len(fields) != 5 or not fields[3].isdigit():
        return False
    boot, namespace, start, parent, parent_start = fields
    if boot != _boot_id() or namespace != _pid_namespace():
        return False
    return not _runs(int(pid), start) and not _runs(int(parent), parent_start)


def _runs(pid: int, start: str) -> bool:
    found = _stat(pid)
    return found is not None and found[0] == start


def _stat(pid: int) -> tuple[str, int] | None:
    """(start time, parent pid) from /proc/{pid}/stat (fields 22 and 4, counted past the
    parenthesised name, which may hold spaces); None if no such process runs (a zombie has exited:
    only its parent's wait is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19], int(fields[1])


@functools.cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return None


@functools.cache
def _pid_namespace() -> str | None:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
