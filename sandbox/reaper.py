"""How an instance's exit status reaches the zygote.

The zygote forks the instance as PID 1 of a new pid namespace (issue 15); PID 1
forks the worker and reaps every orphan until the worker exits, then exits
"like" it. PID 1 cannot kill itself with a signal it has no handler for, so a
signal death is encoded as 128 + signal, which the zygote turns back into the
signal (`decode_pid1_exit`). A process that is not PID 1 (the Node.js keeper)
exits like its child with `wait_and_exit_like`, re-raising the same signal.

PID 1 does that reaping as a small native program of ours, `fgd-pid1` (built
from sandbox/pid1.c next to this file, by `make` in a checkout and by
scripts/install in an installed tree): after forking the worker, the forked
Python PID 1 execs it (`run_pid1`), so an idle instance's PID 1 holds a few
pages instead of a copy of the zygote. The zygote opens the program once
(`load_native`) and every instance inherits that descriptor, so it is exec'd
from the host after the sandbox's pivot_root without being mounted in it. If
it is missing or unfit, PID 1 stays the forked Python process (`become_reaper`)
and the zygote, the daemon's log and `fgd doctor` say so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from typing import NoReturn

from sandbox import fds

# PID 1 cannot kill itself with a signal it has no handler for; it encodes a
# signal death as 128 + signal, which the outer process turns back into the signal.
SIGNAL_BASE = 128
NATIVE_NAME = "fgd-pid1"
# The descriptor of the native PID 1 in the zygote (and each instance it forks); None: the Python one.
_native_fd: int | None = None
# What happens without it, for every message that says it is missing.
_FALLBACK = "build it with `make`; meanwhile each instance's PID 1 is a forked Python process, about 2 MiB more"


def native_path() -> str:
    """Where the native PID 1 is: beside this module, in a checkout and in an installed tree alike."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), NATIVE_NAME)


def check_native(path: str | None = None) -> tuple[bool, str]:
    """Whether the native PID 1 can be used, and a line saying what was found (`fgd doctor`)."""
    path = path or native_path()
    try:
        fd = _open_native(path)
    except OSError as exc:
        return False, f"{exc.strerror or exc}: {path} ({_FALLBACK})"
    os.close(fd)
    return True, path


def _open_native(path: str) -> int:
    """An O_PATH descriptor of the program, after checking nobody but root could have replaced it."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not info.st_mode & stat.S_IXUSR:
            raise OSError(0, "not an executable file")
        # PID 1 of every sandbox runs it as root: a file others could write is not used.
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in (0, os.geteuid()):
            raise OSError(0, "owned or writable by others than root")
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_native(path: str | None = None) -> bool:
    """In the zygote, once: open the native PID 1 for every instance forked from now on."""
    global _native_fd
    path = path or native_path()
    try:
        _native_fd = _open_native(path)
    except OSError as exc:
        _native_fd = None
        print(f"zygote: no native PID 1 ({exc.strerror or exc}: {path}); {_FALLBACK}", file=sys.stderr, flush=True)
        return False
    return True


def forget_native() -> None:
    """In the worker: the native PID 1's descriptor is PID 1's business only."""
    global _native_fd
    if _native_fd is not None:
        os.close(_native_fd)
        _native_fd = None


def run_pid1(worker: int) -> NoReturn:
    """PID 1 of the sandbox, after forking `worker`: hold nothing, reap, exit like the worker.

    Every descriptor is closed (stdio and the protocol socket too: PID 1 says
    nothing), then the native PID 1 is exec'd; if that fails, this process reaps.
    """
    fds.close_all_but({_native_fd} if _native_fd is not None else set())
    if _native_fd is not None:
        # An empty environment; argv names no host path (it is /proc/1/cmdline in the sandbox).
        # If the exec fails, this process goes on as the reaper.
        with contextlib.suppress(OSError):
            os.execve(_native_fd, [NATIVE_NAME, str(worker)], {})
    # As the native one does: no handler (Python's SIGINT one would let a signal end PID 1), so
    # the kernel drops what the namespace sends PID 1; nothing blocked, SIGCHLD not ignored.
    for signum in signal.valid_signals():
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    become_reaper(worker)


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
