"""The Python zygote: a single-threaded process that forks instances.

The daemon is multi-threaded and holds secrets, so it never forks user code.
This process imports only the runtime shim, freezes the GC so forked children
share its pages, and forks one instance per `Fork` request. The request
carries three descriptors by SCM_RIGHTS: the instance's end of its socketpair,
and the write ends of its stdout and stderr pipes.

Usage: python -m runtimes.python.zygote CONTROL_FD DAEMON_PID [--seccomp-fd=FD]

FD holds the seccomp programs the daemon built (msgpack: profile -> BPF bytes).
This module runs in every interpreter that serves a Python runtime (3.9 and
newer): no syntax or library newer than that here.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback

import msgspec
import prctl

from runtimes import protocol
from runtimes.python import instance
from sandbox import reaper
from sandbox.namespaces import PidNamespaceForker
from sandbox.reaper import decode_pid1_exit

MAX_FDS = 3


def receive_fork(control: socket.socket) -> tuple[protocol.Frame, list[int]] | None:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = control.recvmsg(4096, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    if not msg:
        return None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return protocol.decode(msg), list(fds)


INSTANCE_OOM_SCORE_ADJ = "500"


def become_instance(control: socket.socket, wakeup_r: int, fds: list[int], programs: dict[str, bytes]) -> None:
    """In the child: wire up descriptors and run the instance loop."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    os.close(wakeup_r)
    sock_fd, out_fd, err_fd = fds
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    os.setpgid(0, 0)
    # When memory runs out, the OOM killer must take an instance, not the daemon or this zygote:
    # raising one's own score needs no privilege; written while privileged, it is also a floor
    # the function cannot go below.
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(INSTANCE_OOM_SCORE_ADJ)
    except OSError:
        pass
    prctl.set_pdeathsig(signal.SIGKILL)
    gc.enable()
    instance.serve(socket.socket(fileno=sock_fd), programs)


def run_child(control: socket.socket, wakeup_r: int, fds: list[int], programs: dict[str, bytes]) -> int:
    """The forked child's whole life; returns its exit status (it never returns to the loop)."""
    try:
        become_instance(control, wakeup_r, fds, programs)
    except SystemExit as exc:
        # sys.exit() in user code: exit with the status it asked for.
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return to the loop
        traceback.print_exc()
        return 70
    return 0


def reap(control: socket.socket, namespaced: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        if pid in namespaced:
            # PID 1 of the instance's sandbox exited like its worker, a signal as 128 + n.
            namespaced.discard(pid)
            code = decode_pid1_exit(code)
        control.send(protocol.encode_packet(protocol.Exited(pid, code)))


# /proc/<pid>/stat fields (1-based) bounding the command line and environment blocks.
ARG_START, ENV_END = 48, 51
# What ps shows for us afterwards: how we were started, without the interpreter's host path.
TITLE = b"python3\0-m\0runtimes.python.zygote"


def forget_start_blocks() -> None:
    """Zero the memory our command line and environment were passed in, and empty os.environ.

    Every instance is forked from us, and /proc/self/environ, /proc/self/cmdline
    and the pages between env_start and env_end would otherwise show them what
    we were started with (the interpreter's host path, PYTHONPATH ...). Python has
    copied what it needs; glibc's environ pointers now see empty strings.
    """
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (the state).
    start, end = int(fields[ARG_START - 3]), int(fields[ENV_END - 3])
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)
        ctypes.memmove(start, TITLE, len(TITLE))
    os.environ.clear()


def read_programs(argv: list[str]) -> dict[str, bytes]:
    """The seccomp programs passed in the descriptor named by --seccomp-fd (none: seccomp is off)."""
    for arg in argv:
        if arg.startswith("--seccomp-fd="):
            fd = int(arg.partition("=")[2])
            with os.fdopen(fd, "rb") as handle:
                return msgspec.msgpack.decode(handle.read(), type=dict[str, bytes])
    return {}


def main() -> None:
    forget_start_blocks()
    positional = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    control = socket.socket(fileno=int(positional[0]))
    daemon_pid = int(positional[1])
    # If the daemon dies, so do we, and (through their own pdeathsig) our instances.
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != daemon_pid:
        sys.exit(1)
    # Orphaned grandchildren (a handler's background subprocess) come back to us to be reaped.
    prctl.set_child_subreaper(True)
    # Built once by the daemon, loaded by each instance as its last containment step.
    programs = read_programs(sys.argv[1:])
    # Issue 13: modules the instances need that the sandbox will not show (fgd's own packages are
    # not mounted in it): the Custom/http pool's zygote preloads its agent (fgd.custom).
    for arg in sys.argv[1:]:
        if arg.startswith("--preload="):
            for module in arg.partition("=")[2].split(","):
                importlib.import_module(module)
    # Issue 15: instances that will be contained are forked as PID 1 of their own pid namespace,
    # which execs the native fgd-pid1 once it has forked its worker (opened here, once, for all).
    reaper.load_native()
    forker: PidNamespaceForker | None = None
    # Our children that are PID 1 of a sandbox: their exit status is their worker's, encoded.
    namespaced: set[int] = set()
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sys.stdout.flush()
    sys.stderr.flush()
    # What instances will import from is the stdlib (and the function's own trees): the finders
    # this process cached for fgd's tree go now, once, rather than in every instance.
    instance.forget_other_paths([p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p])
    gc.collect()
    gc.freeze()
    gc.disable()
    # The daemon closing its end while frames were still unread (killed, or stopping while it
    # started instances) is a reset, not an end of file, on a read or a write: the same news.
    try:
        while True:
            readable, _, _ = select.select([control, wakeup_r], [], [])
            if wakeup_r in readable:
                os.read(wakeup_r, 4096)
                reap(control, namespaced)
            if control not in readable:
                continue
            received = receive_fork(control)
            if received is None:
                return
            frame, fds = received
            if not isinstance(frame, protocol.Fork) or len(fds) != MAX_FDS:
                for fd in fds:
                    os.close(fd)
                continue
            pid = -1
            if frame.pid_namespace:
                try:
                    if forker is None:
                        forker = PidNamespaceForker()
                    pid = forker.fork()
                except OSError as exc:
                    # Forked plainly instead: its Contain step fails and says why.
                    print(f"zygote: cannot fork into a new pid namespace: {exc}", file=sys.stderr)
            if pid < 0:
                pid = os.fork()
            elif pid > 0:
                namespaced.add(pid)
            if pid == 0:
                os._exit(run_child(control, wakeup_r, fds, programs))
            for fd in fds:
                os.close(fd)
            # The child does it too; whichever runs first wins the race harmlessly.
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
            control.send(protocol.encode_packet(protocol.Forked(frame.instance_id, pid)))
    except ConnectionError:
        return


if __name__ == "__main__":
    main()
