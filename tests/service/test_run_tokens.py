"""A run's claim token names its pool process and that process's parent (the worker's main
process); a worker of this machine whose both processes are gone is told from the token alone, and
nothing else is: a pool process lost while its main process lives (the main process accounts for
it), another host, boot or pid namespace, a reused pid, or a token in another format."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from hyv.service.run_tokens import UNKNOWN, process_is_gone, process_stamp, run_token
from tests.service.conftest import wait_until

NO_SUCH_PID = 2**22 + 1  # above Linux's largest pid


def token_of(pid: int, task_id: str = "task-1") -> str:
    return f"{socket.gethostname()}:{pid}:{process_stamp(pid)}:{task_id}"


def worker_like() -> tuple[subprocess.Popen[str], int]:
    """A stand-in worker: a main process (sh) and its pool process (sleep); returns both."""
    main = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait; sleep 60"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # killed with its group: no sleep outlives the test
    )
    assert main.stdout is not None
    return main, int(main.stdout.readline())


def test_a_token_names_this_process_its_parent_and_ends_with_the_task_id() -> None:
    worker = f"{socket.gethostname()}:{os.getpid()}"
    token = run_token(worker, "0f9c-task")
    assert token.startswith(worker + ":") and token.endswith(":0f9c-task")
    assert token == token_of(os.getpid(), "0f9c-task")
    assert process_stamp().split(".")[3] == str(os.getppid())
    assert not process_is_gone(token)


def test_a_worker_is_gone_when_its_pool_process_and_main_process_are() -> None:
    main, pool = worker_like()
    token = token_of(pool)
    try:
        assert process_stamp(pool).split(".")[3] == str(main.pid)
        os.kill(pool, signal.SIGKILL)
        wait_until(lambda: process_stamp(pool) == UNKNOWN, 5)  # reaped by its main process
        assert not process_is_gone(token)  # its main process lives: it accounts for its pool
        os.killpg(main.pid, signal.SIGKILL)
        wait_until(lambda: process_is_gone(token), 5)  # a zombie until reaped: exited all the same
    finally:
        os.killpg(main.pid, signal.SIGKILL)
        main.wait()
    assert process_is_gone(token)


def test_a_reused_pid_is_another_process() -> None:
    boot, namespace, start, _, _ = process_stamp().split(".")
    earlier = f"{boot}.{namespace}.{int(start) - 1}.{NO_SUCH_PID}.1"
    assert process_is_gone(f"{socket.gethostname()}:{os.getpid()}:{earlier}:task-1")
    same = f"{boot}.{namespace}.{start}.{NO_SUCH_PID}.1"
    assert not process_is_gone(f"{socket.gethostname()}:{os.getpid()}:{same}:task-1")


def test_what_cannot_be_checked_here_is_never_gone() -> None:
    main, pool = worker_like()
    stamp = process_stamp(pool)
    os.killpg(main.pid, signal.SIGKILL)
    main.wait()
    boot, namespace, rest = stamp.split(".", 2)
    host = socket.gethostname()
    wait_until(lambda: process_is_gone(f"{host}:{pool}:{stamp}:task-1"), 5)
    for token in [
        f"another-{host}:{pool}:{stamp}:task-1",  # another machine
        f"{host}:{pool}:{'0' * 12}.{namespace}.{rest}:task-1",  # another boot
        f"{host}:{pool}:{boot}.1.{rest}:task-1",  # another pid namespace (a container)
        f"{host}:{pool}:{UNKNOWN}:task-1",  # made where /proc did not tell
        "w2",
        "worker-b:9:task-2",
        f"{host}:{pool}:task-1",  # the format before stamps
    ]:
        assert not process_is_gone(token), token
