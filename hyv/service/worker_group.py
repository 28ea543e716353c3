"""A worker that owns N devices: rank 0 (the Celery pool process) and N-1 follower processes in one
torch.distributed group (NCCL on GPUs, gloo on the CPU), every job run sequence-parallel.

    rank 0 (this module)                      ranks 1..N-1 (hyv.service.group_follower)
    ------------------------------------      ------------------------------------------
    listens on a loopback control socket      connect to it (a random authkey in the env)
    starts the followers                      join the process group, load the pipeline
    joins the group, loads, parallelize()     parallelize(), say "ready"
    per job: sends the request to each,       per job: run VideoPipeline.frames (no encoding)
      runs VideoPipeline.stream (it alone       with the same stop agreement, say "done"
      writes progress, events and the MP4)

Faults. Every collective is bounded by `sp_timeout_seconds` (the process group's timeout). A rank
that dies or hangs makes rank 0's next collective raise: the job fails with WorkerGroupError, which
the job runner turns into one requeue, and the group is marked broken; the worker restarts it
(followers killed, process group destroyed, a fresh one started) before it takes the next job.
Followers ignore SIGTERM and SIGINT (a stop signal to the worker's process group must let rank 0
drain its job with them) and exit when rank 0's control socket closes, so none outlives rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from multiprocessing.connection import Connection, Listener
from typing import TYPE_CHECKING, Any

from hyv.service.job_failures import WorkerGroupError
from hyv.service.settings import Settings

if TYPE_CHECKING:
    from hyv.engine.pipeline import CancelSignal

logger = logging.getLogger(__name__)

# The environment a follower reads (besides the HYV_* settings it inherits).
ENV_RANK = "HYV_GROUP_RANK"
ENV_CONTROL = "HYV_GROUP_CONTROL"  # host:port of rank 0's control socket
ENV_AUTHKEY = "HYV_GROUP_AUTHKEY"  # hex
ENV_INIT = "HYV_GROUP_INIT"  # the process group's tcp:// rendezvous
STOP_GRACE_S = 10.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_group(settings: Settings, rank: int, init_method: str) -> Any:
    """Join the group's default process group; returns the backend's device for collectives."""
    import torch
    import torch.distributed as dist

    from hyv.engine.parallel.groups import default_backend

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = default_backend(device)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=settings.sp_degree,
        timeout=timedelta(seconds=settings.sp_timeout_seconds),  # every collective of the group
    )
    if backend == "nccl":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def group_layout(settings: Settings, num_heads: int) -> Any:
    """The settings' SPConfig for a model with `num_heads` heads (ValueError naming what fits)."""
    from hyv.engine.parallel.groups import layout_for

    return layout_for(settings.sp_mode, settings.sp_degree, num_heads, settings.sp_ulysses_degree)


def check_layout(settings: Settings) -> Any:
    """The settings' layout for the served model, before any process starts (`hyv worker`):
    ValueError naming the degrees that fit when the model's heads do not split."""
    from hyv.engine.bundle_spec import read_bundle_spec
    from hyv.models.dit_config import dit_preset

    heads = dit_preset(read_bundle_spec(settings.weights).dit_preset).num_heads
    return group_layout(settings, heads)


class WorkerGroup:
    """Rank 0 of a worker group; quacks like the VideoPipeline the job runner drives (plan, stream,
    device, options)."""

    def __init__(self, settings: Settings) -> None:
        if settings.sp_degree < 2:
            raise ValueError(f"a worker group needs sp_degree >= 2, got {settings.sp_degree}")
        self.settings = settings
        self.size = settings.sp_degree
        self.pipeline: Any = None
        self.layout: Any = None
        self.followers: list[subprocess.Popen[bytes]] = []
        self.connections: list[Connection] = []
        self.broken = False  # a fault left the group unusable: restart() before the next job
        self._listener: Listener | None = None
        self._stop_agreement: Callable[[bool], bool] | None = None

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> WorkerGroup:
        """Start the followers, join the group, load and wrap the pipeline on every rank. On any
        failure everything started is stopped and the error raised."""
        try:
            self._start()
        except BaseException:
            self.stop(kill=True)
            raise
        self.broken = False
        return self

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.sp_timeout_seconds)

    def _start(self) -> None:
        from hyv.engine.parallel.serving import StopAgreement, parallelize
        from hyv.service.model_loading import load_pipeline

        timeout = self.settings.sp_timeout_seconds
        authkey = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=authkey)
        host, port = self._listener.address
        init_method = f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ)
        env.update({ENV_CONTROL: f"{host}:{port}", ENV_AUTHKEY: authkey.hex(), ENV_INIT: init_method})
        for rank in range(1, self.size):
            self.followers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hyv.service.group_follower"],
                    env={**env, ENV_RANK: str(rank)},
                    stdin=subprocess.DEVNULL,
                )
            )
        self.connections = self._accept(self.size - 1, timeout)
        device = init_group(self.settings, 0, init_method)
        self.pipeline = load_pipeline(self.settings, rank=0)
        self.layout = group_layout(self.settings, self.pipeline.dit.config.num_heads)
        parallelize(self.pipeline, self.layout, self.timeout)
        if self.settings.compile_dit:  # every rank compiles its blocks now, not in the first job
            self.pipeline.warm_up()
        self._stop_agreement = StopAgreement(device)
        for message in self._receive_all("ready", timeout):
            logger.info("group rank ready", extra={"rank": message["rank"], "pid": message["pid"]})
        logger.info(
            "worker group ready",
            extra={
                "ranks": self.size,
                "ulysses": self.layout.ulysses_degree,
                "ring": self.layout.ring_degree,
            },
        )

    def _accept(self, count: int, timeout_s: float) -> list[Connection]:
        """The followers' control connections, in rank order; WorkerGroupError past timeout_s."""
        assert self._listener is not None
        accepted: dict[int, Connection] = {}

        def accept() -> None:
            assert self._listener is not None
            while len(accepted) < count:
                connection = self._listener.accept()
                rank = int(connection.recv()["rank"])
                accepted[rank] = connection

        thread = threading.Thread(target=accept, name="hyv-group-accept", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.2)
            self._check_followers_alive("while starting")
        if len(accepted) < count:
            raise WorkerGroupError(
                f"{count - len(accepted)} group ranks did not connect within {timeout_s} s"
            )
        return [accepted[rank] for rank in range(1, count + 1)]

    def stop(self, kill: bool = False) -> None:
        """Stop the followers (asked to exit, killed if they do not within STOP_GRACE_S, or at once
        with kill) and leave the process group."""
        import torch.distributed as dist

        for connection in self.connections:
            try:
                if not kill:
                    connection.send({"op": "stop"})
                connection.close()
            except OSError:
                pass
        deadline = time.monotonic() + (0 if kill else STOP_GRACE_S)
        for process in self.followers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        if dist.is_initialized():
            dist.destroy_process_group()
        if self._listener is not None:
            self._listener.close()
        self.followers, self.connections, self._listener = [], [], None
        self.pipeline = None

    def restart(self) -> None:
        logger.warning("restarting the worker group", extra={"ranks": self.size})
        self.stop(kill=True)
        self.start()

    # --- what the job runner calls ----------------------------------------------------------------

    @property
    def device(self) -> Any:
        return self.pipeline.device

    @property
    def options(self) -> Any:
        return self.pipeline.options

    @property
    def dit(self) -> Any:
        return self.pipeline.dit

    def plan(self, request: Any) -> Any:
        return self.pipeline.plan(request)

    def stream(
        self,
        request: Any,
        on_progress: Any = None,
        cancel: CancelSignal = None,
        result: dict[str, object] | None = None,
    ) -> Iterator[bytes]:
        """VideoPipeline.stream over the group. A cancel (or anything that stops rank 0) stops every
        rank at the same step. A rank that died or hung -> WorkerGroupError (the group is broken)."""
        from hyv.engine.pipeline import GenerationCancelledError

        if self.broken or self.pipeline is None:
            raise WorkerGroupError("the worker group is restarting")
        agree = self._stop_agreement
        assert agree is not None
        local_stop = cancel.is_set if isinstance(cancel, threading.Event) else cancel or (lambda: False)
        finished = False
        try:
            self._send_all({"op": "run", "request": request})
            yield from self.pipeline.stream(request, on_progress, lambda: agree(bool(local_stop())), result)
            self._receive_all("done", self.settings.sp_timeout_seconds)
            finished = True
        except GenerationCancelledError:
            self._receive_all("done", self.settings.sp_timeout_seconds)
            finished = True
            raise
        except WorkerGroupError:
            raise
        except Exception as exc:
            fault = self._fault_behind(exc)
            if fault is not None:
                raise WorkerGroupError(fault) from exc
            raise
        finally:
            if not finished:  # the followers may be inside a collective rank 0 left: start afresh
                self.broken = True

    # --- internals ----------------------------------------------------------------------------------

    def _send_all(self, message: dict[str, Any]) -> None:
        for rank, connection in enumerate(self.connections, start=1):
            try:
                connection.send(message)
            except OSError as exc:
                raise WorkerGroupError(f"group rank {rank} is gone ({exc})") from exc

    def _receive_all(self, op: str, timeout_s: float) -> list[dict[str, Any]]:
        """One `op` message from every follower, in rank order; WorkerGroupError when a follower
        reports an error, exits, or says nothing within timeout_s."""
        messages = []
        deadline = time.monotonic() + timeout_s
        for rank, connection in enumerate(self.connections, start=1):
            while True:
                self._check_followers_alive(f"before sending '{op}'")
                try:
                    if connection.poll(0.2):
                        message = connection.recv()
                        break
                except (EOFError, OSError) as exc:
                    raise WorkerGroupError(f"group rank {rank} closed its control connection") from exc
                if time.monotonic() > deadline:
                    raise WorkerGroupError(f"group rank {rank} sent no '{op}' within {timeout_s} s")
            if message.get("op") == "error":
                raise WorkerGroupError(f"group rank {rank} failed: {message.get('error')}")
            if message.get("op") != op:
                raise WorkerGroupError(f"group rank {rank} sent {message.get('op')!r}, expected {op!r}")
            messages.append(message)
        return messages

    def _check_followers_alive(self, when: str) -> None:
        for rank, process in enumerate(self.followers, start=1):
            code = process.poll()
            if code is not None:
                raise WorkerGroupError(f"group rank {rank} (pid {process.pid}) exited with {code} {when}")

    def _fault_behind(self, exc: Exception) -> str | None:
        """Why the group failed, if `exc` came from the group rather than from this job (a dead or
        hung rank shows up as a failed collective on rank 0)."""
        from hyv.engine.parallel.serving import raised_by_collective

        for rank, process in enumerate(self.followers, start=1):
            code = process.poll()
            if code is not None:
                return (
                    f"group rank {rank} (pid {process.pid}) exited with {code} ({type(exc).__name__}: {exc})"
                )
        if raised_by_collective(exc):
            return f"a collective of the worker group failed: {type(exc).__name__}: {exc}"
        return None

    def info(self) -> dict[str, Any]:
        """For the worker's beat: the group's shape and its processes."""
        return {
            "degree": self.size,
            "mode": self.settings.sp_mode,
            "ulysses_degree": getattr(self.layout, "ulysses_degree", None),
            "ring_degree": getattr(self.layout, "ring_degree", None),
            "pids": [os.getpid(), *(p.pid for p in self.followers)],
            "broken": self.broken,
        }
