"""Daemon side of a runtime's zygote: start it, supervise it, ask it to fork.

The zygote is a child of the daemon connected by a SOCK_SEQPACKET socketpair.
`fork()` sends the instance's descriptors with a `Fork` packet and waits for
`Forked`; the zygote also reports `Exited` for every instance it reaps, which
turns an instance's end-of-file into a precise exit status.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import trio

from runtimes import protocol

log = logging.getLogger("fgd.zygote")

RESTART_DELAY = 0.5
MAX_REMEMBERED_EXITS = 4096


class ZygoteUnavailable(Exception):
    """The zygote is not running (starting, restarting or shut down)."""


class Zygote:
    def __init__(self, runtime: str, argv: Sequence[str], environment: dict[str, str] | None = None) -> None:
        self.runtime = runtime
        self._argv = list(argv)
        # The zygote starts from an empty environment plus this: never the daemon's (the
        # operator's shell variables, credentials), which every instance would inherit.
        self._environment = zygote_environment() if environment is None else environment
        self._control: trio.socket.SocketType | None = None
        self._fork_lock = trio.Lock()
        self._forked: dict[str, int] = {}
        self._fork_done: dict[str, trio.Event] = {}
        self._exit_events: dict[int, trio.Event] = {}
        self.exit_codes: dict[int, int] = {}
        self.ready = trio.Event()
        self.generation = 0
        self.pid: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a zygote running until cancelled; restart it if it dies."""
        started = False
        while True:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            argv = [*self._argv, str(child.fileno()), str(os.getpid())]
            # Spawned from this (the main) thread on purpose: the zygote's pdeathsig
            # fires when the *thread* that forked it exits, and trio's open_process
            # forks from a worker thread that is retired after idling for a while.
            # Its own session: a terminal's Ctrl-C or a group-wide SIGTERM is for the
            # daemon, which decides when zygotes and instances stop.
            process = subprocess.Popen(
                argv,
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self._environment,
            )
            pidfd = os.pidfd_open(process.pid)
            child.close()
            self.pid = process.pid
            self.generation += 1
            self._control = trio.socket.from_stdlib_socket(parent)
            self.ready.set()
            if not started:
                task_status.started()
                started = True
            try:
                await self._read_control()
            finally:
                self._control.close()
                self._control = None
                self.ready = trio.Event()
                self._fail_pending_forks()
                with trio.CancelScope(shield=True):
                    if process.poll() is None:
                        process.kill()
                    await trio.lowlevel.wait_readable(pidfd)
                    process.wait()
                    os.close(pidfd)
            log.warning("zygote %s (pid %s) exited with %s; restarting", self.runtime, process.pid, process.returncode)
            await trio.sleep(RESTART_DELAY)

    async def _read_control(self) -> None:
        assert self._control is not None
        while True:
            try:
                packet = await self._control.recv(4096)
            except OSError:
                return  # ECONNRESET when it died with our packets unread: same as EOF
            if not packet:
                return
            try:
                frame = protocol.decode(packet)
            except protocol.ProtocolError as exc:
                log.error("zygote %s sent garbage (%s); restarting it", self.runtime, exc)
                return
            if isinstance(frame, protocol.Forked):
                self._forked[frame.instance_id] = frame.pid
                done = self._fork_done.pop(frame.instance_id, None)
                if done is not None:
                    done.set()
            elif isinstance(frame, protocol.Exited):
                self.exit_codes[frame.pid] = frame.exit_code
                if len(self.exit_codes) > MAX_REMEMBERED_EXITS:
                    # Nobody asked about the oldest ones; drop them.
                    del self.exit_codes[next(iter(self.exit_codes))]
                event = self._exit_events.pop(frame.pid, None)
                if event is not None:
                    event.set()

    def _fail_pending_forks(self) -> None:
        for event in self._fork_done.values():
            event.set()
        self._fork_done.clear()
        # Instances forked by a dead zygote die with it (pdeathsig): wake their watchers.
        for event in self._exit_events.values():
            event.set()
        self._exit_events.clear()

    async def fork(self, instance_id: str, fds: Sequence[int]) -> int:
        """Fork an instance that inherits `fds` (socket, stdout, stderr); return its pid."""
        async with self._fork_lock:
            control = self._control
            if control is None:
                raise ZygoteUnavailable(f"the {self.runtime} zygote is restarting")
            done = self._fork_done[instance_id] = trio.Event()
            packet = protocol.encode_packet(protocol.Fork(instance_id))
            try:
                await control.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            except OSError as exc:
                self._fork_done.pop(instance_id, None)
                raise ZygoteUnavailable(f"the {self.runtime} zygote is not answering: {exc}") from None
            await done.wait()
        pid = self._forked.pop(instance_id, None)
        if pid is None:
            raise ZygoteUnavailable(f"the {self.runtime} zygote exited while forking")
        return pid

    async def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The exit code the zygote reported for `pid`, waiting up to `timeout`."""
        if pid not in self.exit_codes:
            event = self._exit_events.setdefault(pid, trio.Event())
            with trio.move_on_after(timeout):
                await event.wait()
        return self.exit_codes.pop(pid, None)

    def forget(self, pid: int) -> None:
        self.exit_codes.pop(pid, None)
        self._exit_events.pop(pid, None)


def python_runtime_name() -> str:
    return f"Python{sys.version_info.major}.{sys.version_info.minor}"


def zygote_environment() -> dict[str, str]:
    """What a zygote needs to start: a PATH, a locale, and where fgd's runtime packages are."""
    import runtimes

    source_root = os.path.dirname(os.path.dirname(os.path.abspath(runtimes.__file__ or "")))
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": source_root}


def python_zygote(*, seccomp: bool) -> Zygote:
    argv = [sys.executable, "-m", "runtimes.python.zygote"]
    return Zygote(python_runtime_name(), [*argv, "--seccomp"] if seccomp else argv)
