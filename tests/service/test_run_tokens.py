"""A run's claim token names its process; a process of this machine that is gone is told from its
token alone, and nothing else is: another host, boot or pid namespace, a reused pid, or a token in
another format is left to the claim's lease."""

from __future__ import annotations

import os
import socket
import subprocess

from hyv.service.run_tokens import UNKNOWN, process_is_gone, process_stamp, run_token
from tests.service.conftest import wait_until


def token_of(pid: int, task_id: str = "task-1") -> str:
    return f"{socket.gethostname()}:{pid}:{process_stamp(pid)}:{task_id}"


def test_a_token_names_this_process_and_ends_with_the_task_id() -> None:
    worker = f"{socket.gethostname()}:{os.getpid()}"
    token = run_token(worker, "0f9c-task")
    assert token.startswith(worker + ":") and token.endswith(":0f9c-task")
    assert process_stamp() != UNKNOWN and token == token_of(os.getpid(), "0f9c-task")
    assert not process_is_gone(token)


def test_a_process_that_exited_is_gone() -> None:
    child = subprocess.Popen(["sleep", "30"])
    token = token_of(child.pid)
    assert not process_is_gone(token)
    child.kill()
    wait_until(lambda: process_is_gone(token), 5)  # a zombie until reaped: exited all the same
    child.wait()
    assert process_is_gone(token)


def test_a_reused_pid_is_another_process() -> None:
    boot, namespace, start = process_stamp().split(".")
    earlier = f"{boot}.{namespace}.{int(start) - 1}"
    assert process_is_gone(f"{socket.gethostname()}:{os.getpid()}:{earlier}:task-1")


def test_what_cannot_be_checked_here_is_never_gone() -> None:
    child = subprocess.Popen(["true"])
    stamp = process_stamp(child.pid)
    child.wait()
    boot, namespace, start = stamp.split(".")
    host = socket.gethostname()
    for token in [
        f"another-{host}:{child.pid}:{stamp}:task-1",  # another machine
        f"{host}:{child.pid}:{'0' * 12}.{namespace}.{start}:task-1",  # another boot
        f"{host}:{child.pid}:{boot}.1.{start}:task-1",  # another pid namespace (a container)
        f"{host}:{child.pid}:{UNKNOWN}:task-1",  # made where /proc did not tell
        "w2",
        "worker-b:9:task-2",
        f"{host}:{child.pid}:task-1",  # the format before stamps
    ]:
        assert not process_is_gone(token), token
