"""The two small processes that carry an instance's life and exit status.

The instance process (a zygote's child) forks PID 1 of the new pid namespace
and waits for it; PID 1 forks the worker and reaps every orphan until the
worker exits. Each then exits "like" its child: the same exit code, or the
same signal, so the zygote reports what really happened to the worker.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

# PID 1 cannot kill itself with a signal it has no handler for; it encodes a
# signal death as 128 + signal, which the outer process turns back into the signal.
SIGNAL_BASE = 128


def become_reaper(worker: int) -> NoReturn:
    """PID 1: reap everything; when the worker exits, exit with its status (killing the rest)."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else SIGNAL_BASE - code)


def wait_and_exit_like(child: int) -> NoReturn:
    """The instance process: wait for PID 1 and leave with the worker's exit code or signal."""
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        os._exit(SIGNAL_BASE - code)
    if SIGNAL_BASE < code < SIGNAL_BASE + 65:
        signum = code - SIGNAL_BASE
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    os._exit(code)
