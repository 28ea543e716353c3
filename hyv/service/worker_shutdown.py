"""A worker asked to stop: its running job gets `shutdown_grace_seconds` to finish, then goes back to
the front of its queue, marked queued (hyv.service.job_runner: the run stops at its next step), and
the worker exits. Nothing is lost or run twice, and no record is left `in_progress` by a dead run.

How the pool process (the one running jobs) hears of the stop:

    SIGTERM   sent to the worker's whole process group (systemd, `launcher.stop_worker`, `hyv serve`
              on Ctrl-C). Idle: the handler that was there before ours (billiard's: the process
              exits), nothing to hand back. Busy: the grace starts; a second SIGTERM cuts it short
              (the job is handed back at its next step: a second Ctrl-C on `hyv serve`).
    SIGUSR2   from the worker's main process when Celery's shutdown starts there (a SIGTERM or
              SIGINT sent to the main process alone: `docker stop`, Kubernetes, Ctrl-C on
              `hyv worker`): the grace starts if busy; idle, nothing (the pool's close ends it).

Celery's main process meanwhile waits for the running task (its warm shutdown), so it exits once
the job has finished or been handed back. Billiard's own SIGTERMs (a hard time limit) are followed
by SIGKILL within 0.1 s, as before.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from hyv.service.running_job import HandBackDeadline

logger = logging.getLogger(__name__)

MAIN_STOPPING_SIGNAL = signal.SIGUSR2  # main process -> pool processes: the worker is stopping


class StopSignals:
    """The pool process's SIGTERM and SIGUSR2 handlers, moving the running job's hand-back deadline."""

    def __init__(self, deadline: HandBackDeadline, grace_s: float, busy: Callable[[], bool]) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.deadline = deadline
        self.grace_s = grace_s
        self._busy = busy
        self._terms = 0  # SIGTERMs received during the running job
        self._idle_sigterm: Any = signal.SIG_DFL  # the SIGTERM handler ours replaced

    def install(self) -> None:
        """Take SIGTERM and SIGUSR2. Call it as the process starts and again as each job starts:
        billiard installs its own SIGTERM handler after the process's initializer has run. Only the
        main thread can take signals: a runtime driven from another thread (tests, an embedding
        application) keeps the handlers it has."""
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if current != self._on_sigterm:
            self._idle_sigterm = current
            signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(MAIN_STOPPING_SIGNAL, self._on_main_stopping)

    def job_ended(self) -> None:
        """The running job ended (finished or handed back): a later job starts with no deadline. The
        process goes on only if the stop never reached its main process (a SIGTERM sent to this
        process alone); otherwise the pool's close ends it now."""
        self._terms = 0
        self.deadline.clear()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._busy():  # nothing to hand back: what SIGTERM did here before
            if callable(self._idle_sigterm):
                self._idle_sigterm(signum, frame)
            elif self._idle_sigterm != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        self._terms += 1
        if self._terms == 1:
            self._start_grace("SIGTERM")
        else:
            self.deadline.cut_short()
            logger.warning("asked again to stop: the running job goes back to its queue at its next step")

    def _on_main_stopping(self, signum: int, frame: Any) -> None:
        if self._busy():
            self._start_grace("the worker's main process is stopping")

    def _start_grace(self, why: str) -> None:
        if self.deadline.start(self.grace_s):
            logger.warning(
                f"stopping ({why}): the running job has {self.grace_s:g} s to finish, then it goes back "
                "to the front of its queue",
                extra={"grace_s": self.grace_s},
            )


def tell_pool_processes(pids: list[int]) -> None:
    """From the worker's main process as its shutdown starts: each pool process starts its job's
    grace (MAIN_STOPPING_SIGNAL). A process already gone is skipped."""
    for pid in pids:
        try:
            os.kill(pid, MAIN_STOPPING_SIGNAL)
        except ProcessLookupError:
            continue
