"""How an instance's exit status reaches the zygote.

The zygote forks the instance as PID 1 of a new pid namespace (issue 15); PID 1
forks the worker and reaps every orphan until the worker exits, then exits
"like" it. PID 1 cannot kill itself with a signal it has no handler for, so a
signal death is encoded as 128 + signal, which the zygote turns back into the
signal (`decode_pid1_exit`). A process that is not PID 1 (the Node.js keeper)
exits like its child with `wait_and_exit_like`, re-raising the same signal.
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


def decode_pid1_exit(code: int) -> int:
    """PID 1's exit code (os.waitstatus_to_exitcode) as the worker's: 128 + n is signal n (-n)."""
    if SIGNAL_BASE < code < SIGNAL_BASE + 65:
        return SIGNAL_BASE - code
    return code


def wait_and_exit_like(child: int) -> NoReturn:
    """Wait for `child` and leave with its exit code or signal (or the signal its 128 + n names)."""
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
