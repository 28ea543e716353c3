"""A non-zero rank of a worker group (`python -m hyv.service.group_follower`, started by
hyv.service.worker_group.WorkerGroup with its rank and rank 0's control address in the environment).

It joins the group, loads the same pipeline on its device, wraps it for sequence parallelism and
then runs, for every job rank 0 sends, the same denoise and decode without encoding (rank 0 alone
writes the video). It never talks to Redis or storage. It exits when rank 0 says stop or its control
connection closes (rank 0 died), and after any error of its own (the group restarts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from typing import Any

from hyv.service.log import configure_logging
from hyv.service.settings import get_settings
from hyv.service.worker_group import ENV_AUTHKEY, ENV_CONTROL, ENV_INIT, ENV_RANK, group_layout, init_group

logger = logging.getLogger(__name__)


def run_jobs(connection: Connection, pipeline: Any, agree: Any) -> None:
    """Serve rank 0's jobs until it says stop or goes away."""
    from hyv.engine.pipeline import GenerationCancelledError

    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            logger.info("rank 0 is gone: exiting")
            return
        if message.get("op") == "stop":
            return
        outcome = "completed"
        try:
            for _ in pipeline.frames(message["request"], cancel=lambda: agree(False)):
                pass
        except GenerationCancelledError:
            outcome = "cancelled"
        connection.send({"op": "done", "outcome": outcome})


def main() -> int:
    # A stop signal to the worker's process group is for rank 0 to act on (drain its job, then stop
    # us through the control connection): ignoring it here keeps the running job alive meanwhile.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = get_settings()
    configure_logging(settings.log_level)
    rank = int(os.environ[ENV_RANK])
    host, port = os.environ[ENV_CONTROL].rsplit(":", 1)
    connection = Client((host, int(port)), authkey=bytes.fromhex(os.environ[ENV_AUTHKEY]))
    connection.send({"rank": rank})
    try:
        from hyv.engine.parallel.serving import StopAgreement, parallelize
        from hyv.service.model_loading import load_pipeline

        device = init_group(settings, rank, os.environ[ENV_INIT])
        pipeline = load_pipeline(settings, rank=rank)
        layout = group_layout(settings, pipeline.dit.config.num_heads)
        parallelize(pipeline, layout, timedelta(seconds=settings.sp_timeout_seconds))
        if settings.compile_dit:  # the same warm-up as rank 0's (its collectives included)
            pipeline.warm_up()
        agree = StopAgreement(device)
        connection.send({"op": "ready", "rank": rank, "pid": os.getpid()})
        run_jobs(connection, pipeline, agree)
    except Exception as exc:
        logger.exception("group rank failed", extra={"rank": rank})
        with contextlib.suppress(OSError):
            connection.send({"op": "error", "error": f"{type(exc).__name__}: {exc}"})
        # The process group may be mid-collective: exit without its teardown (which could wait).
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
