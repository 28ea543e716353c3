"""Start a sequence-parallel job: N local processes (`torch.multiprocessing.spawn`) or torchrun.

`run_sequence_parallel(fn, world_size, *args)` is the one entry point for `hyv generate --sp N`:
- under torchrun (RANK / WORLD_SIZE in the environment) it joins the existing job and runs
  `fn(*args)` in this process (one per GPU, any number of machines), returning its result;
- otherwise it spawns `world_size` local processes on a free TCP port and returns rank 0's result.

`fn` runs on every rank after the default process group is initialised (nccl on CUDA, gloo on
CPU; on CUDA the current device is cuda:LOCAL_RANK); it typically calls
`init_sequence_parallel(...)` and returns something picklable (rank 0's is the one kept).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyv.engine.parallel.groups import default_backend, init_process_group_from_env

logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A TCP port that was free on localhost a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    out_dir: str,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    if backend == "gloo":  # N processes share the cores: avoid oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    init_process_group_from_env(rank, world_size, backend)
    try:
        result = fn(*args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_sequence_parallel(
    fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None
) -> list[Any]:
    """Run `fn(*args)` on `world_size` local processes joined in one process group; returns every
    rank's result, in rank order (each is pickled through a temporary file: keep them small on
    ranks > 0, e.g. return None there). Raises if any rank fails."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"--sp {world_size} with nccl needs {world_size} local GPUs, found {torch.cuda.device_count()}"
        )
    with tempfile.TemporaryDirectory(prefix="hyv-sp-") as out_dir:
        port = find_free_port()
        logger.info("spawning %d sequence-parallel processes (%s, port %d)", world_size, backend, port)
        mp.spawn(
            _worker,
            args=(world_size, port, backend, fn, args, out_dir),
            nprocs=world_size,
            join=True,
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def run_sequence_parallel(
    fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None
) -> Any:
    """`fn(*args)` over a sequence-parallel job: torchrun's if launched by torchrun (world_size is
    then taken from the environment), else `world_size` spawned local processes. Returns this
    process's result under torchrun, rank 0's result otherwise."""
    if launched_by_torchrun():
        env_world = int(os.environ["WORLD_SIZE"])
        if world_size not in (env_world, 0):
            logger.warning("--sp %d ignored: torchrun started %d processes", world_size, env_world)
        init_process_group_from_env(backend=backend)
        return fn(*args)
    return spawn_sequence_parallel(fn, world_size, *args, backend=backend)[0]
