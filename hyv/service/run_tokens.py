"""A run's claim token, and telling from a token alone that its process is gone.

A claim's token (hyv.service.job_claims) names the run that holds the job:

    {host}:{pid}:{boot}.{pid namespace}.{start}:{task id}

the pool process (`{host}:{pid}`, the worker's name in the job record and the registry), where that
process lives (the kernel's boot id and its pid namespace, so a pid is read only where it means the
same process: two containers sharing a host name have separate pid namespaces) and when it started
(its start time in clock ticks since boot, so a reused pid is told apart), and the Celery task id
last (JobRecords.fail_dead_run matches `:{task id}`).

A worker starting on the machine where a killed worker ran sees at once that the token's process is
gone and takes the job back (hyv.service.worker_process.requeue_orphans) instead of waiting out the
claim's lease. Anywhere else, or where /proc cannot say, `process_is_gone` answers False and the
lease decides, as for any other claim.
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
    """`{boot id}.{pid namespace}.{start time}` of process `pid` (default: this one), as seen from
    here; UNKNOWN where /proc does not tell. Not cached: a forked pool process is another process."""
    start = _start_ticks(pid or os.getpid())
    boot, namespace = _boot_id(), _pid_namespace()
    if start is None or boot is None or namespace is None:
        return UNKNOWN
    return f"{boot}.{namespace}.{start}"


def process_is_gone(token: str) -> bool:
    """True only when `token` names a process on this machine and in this pid namespace that no
    longer runs (its pid is free, or now another process's). A token in another format, from another
    host, boot or namespace, or made where /proc did not tell: False."""
    parts = token.rsplit(":", 3)
    if len(parts) != 4:
        return False
    host, pid_text, stamp, _ = parts
    boot_namespace_start = stamp.split(".")
    if host != socket.gethostname() or not pid_text.isdigit() or len(boot_namespace_start) != 3:
        return False
    boot, namespace, start = boot_namespace_start
    if boot != _boot_id() or namespace != _pid_namespace():
        return False
    return _start_ticks(int(pid_text)) != start


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/{pid}/stat (after the parenthesised name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has exited: only its parent's wait is left
        return None
    return fields[19]


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
