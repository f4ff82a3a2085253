"""Daemon side of one function instance: its socket, its output pipes, its life.

An instance is forked by a zygote, specialised once for one function revision,
then serves invocations one at a time. Its stdout and stderr are pipes read by
the daemon, so output of any process it starts is attributed to the request
that was running when the bytes arrived.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import time
import uuid

import trio

from fgd.sandboxing import Sandbox
from fgd.store import LogLine
from fgd.zygote import Zygote
from runtimes import protocol
from sandbox.cgroups import CgroupError, Limits

READ_CHUNK = 1 << 16
# How long to wait for the zygote's exit report after the socket closed.
EXIT_REPORT_WAIT = 0.5


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


class InstanceGone(Exception):
    """The instance closed its socket or sent garbage; it is no longer usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _create_and_place(cgroups, name: str, pid: int, limits: Limits) -> None:
    cgroups.create(name)
    cgroups.set_limits(name, limits)
    cgroups.place(name, pid)


class OutputPipe:
    """Non-blocking reader of one of the instance's output pipes, split into lines."""

    def __init__(self, fd: int, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self._partial = b""
        self.closed = False

    def drain(self) -> list[tuple[str, str]]:
        """Read what is there now; return complete lines as (stream, text)."""
        chunks = []
        while not self.closed:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                break
            if not data:
                self.closed = True
                break
            chunks.append(data)
        if not chunks:
            return []
        data = self._partial + b"".join(chunks)
        *complete, self._partial = data.split(b"\n")
        return [(self.stream, line.decode(errors="replace")) for line in complete]

    def flush_partial(self) -> list[tuple[str, str]]:
        if not self._partial:
            return []
        text, self._partial = self._partial.decode(errors="replace"), b""
        return [(self.stream, text)]


class Instance:
    def __init__(self, zygote: Zygote, max_lines: int, sandbox: Sandbox | None = None) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.sandbox = sandbox
        # One cgroup per instance, named so a restarted daemon can tell its own from stale ones.
        self.cgroup = f"{os.getpid()}-{self.id}" if sandbox is not None and sandbox.cgroups is not None else None
        self.zygote = zygote
        self.zygote_generation = zygote.generation
        self.pid = 0
        self.state = State.STARTING
        self.revision = -1
        self.key: tuple[str, str, str] = ("", "", "")
        self.pool_key: tuple = ()
        self.init_ms: float | None = None
        # sha256 of the code and dependency trees this instance mounts.
        self.packages: set[str] = set()
        self._peak_fd = -1
        self.last_used = time.monotonic()
        # Requests running on the instance now; output from its pipes goes to the one
        # running (to none when several run: their prints come tagged as Log frames).
        self.active: list[str] = []
        self.lines: dict[str, list[LogLine]] = {}
        self.dropped_lines: dict[str, int] = {}
        self.kill_reason = ""
        # Kept started and warm for the function (reserved instances), never reaped.
        self.reserved = False
        self._results: dict[str, protocol.Frame] = {}
        self._waiting: dict[str, trio.Event] = {}
        self._reading = False
        self._gone: str | None = None
        self._send_lock = trio.Lock()
        self._max_lines = max_lines
        self._socket: trio.socket.SocketType | None = None
        self._buffer = protocol.FrameBuffer()
        self._frames: list[protocol.Frame] = []
        self._pipes: list[OutputPipe] = []

    # Life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Fork from the zygote with a fresh socketpair and output pipes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self._pipes = [OutputPipe(out_r, "stdout"), OutputPipe(err_r, "stderr")]
        self._socket = trio.socket.from_stdlib_socket(ours)
        try:
            self.pid = await self.zygote.fork(self.id, [theirs.fileno(), out_w, err_w])
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)

    async def contain(self) -> None:
        """Step 1 (cgroup placement) here, then the generic sandbox steps in the instance."""
        sandbox = self.sandbox
        if sandbox is None:
            return
        try:
            if self.cgroup is not None and sandbox.cgroups is not None:
                cgroups, name, pid = sandbox.cgroups, self.cgroup, self.pid
                # A v1 cgroup move can stall for milliseconds: keep it off the event loop.
                await trio.to_thread.run_sync(_create_and_place, cgroups, name, pid, sandbox.limits(None))
        except CgroupError as exc:
            raise InstanceGone(f"cannot put the instance into its cgroup: {exc}") from None
        if not sandbox.protections.namespaces:
            return
        await self.send(protocol.Contain(sandbox.contain_policy))
        frame = await self.receive()
        if isinstance(frame, protocol.ContainError):
            raise InstanceGone(f"the sandbox could not be built: {frame.message}")
        if not isinstance(frame, protocol.Contained):
            raise InstanceGone(f"unexpected {type(frame).__name__} while building the sandbox")

    def set_limits(self, limits: Limits) -> None:
        if self.cgroup is not None and self.sandbox is not None and self.sandbox.cgroups is not None:
            try:
                self.sandbox.cgroups.set_limits(self.cgroup, limits)
            except CgroupError as exc:
                raise InstanceGone(f"cannot set the instance's limits: {exc}") from None

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer acted in this instance (from the cgroup counter)."""
        if self.cgroup is None or self.sandbox is None or self.sandbox.cgroups is None:
            return False
        try:
            return self.sandbox.cgroups.oom_kills(self.cgroup) > 0
        except CgroupError:
            return False

    def memory_peak_mb(self) -> float | None:
        """Peak memory charged to the instance's cgroup; read on every invocation, so kept open."""
        if self.cgroup is None or self.sandbox is None or self.sandbox.cgroups is None:
            return None
        try:
            if self._peak_fd < 0:
                self._peak_fd = os.open(self.sandbox.cgroups.memory_peak_path(self.cgroup), os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(self._peak_fd, 32, 0)) / (1024 * 1024)
        except (OSError, ValueError):
            return None

    def release(self) -> bool:
        """Remove the instance's cgroup once its processes are gone; False while some remain."""
        if self.cgroup is None or self.sandbox is None or self.sandbox.cgroups is None:
            gone = True
        else:
            try:
                gone = self.sandbox.cgroups.remove(self.cgroup)
            except CgroupError:
                gone = True
        if gone and self.sandbox is not None:
            # No process of the instance is left: its uid may serve another instance.
            self.sandbox.release_uid(self.id)
        return gone

    async def pump_output(self) -> None:
        """Read the output pipes until both are closed (run in the pool's nursery)."""
        async with trio.open_nursery() as nursery:
            for pipe in self._pipes:
                nursery.start_soon(self._pump, pipe)

    async def _pump(self, pipe: OutputPipe) -> None:
        while not pipe.closed:
            try:
                await trio.lowlevel.wait_readable(pipe.fd)
            except (trio.ClosedResourceError, OSError):
                return
            self._collect(pipe.drain())

    def collect_output(self) -> None:
        """Take in what the pipes hold right now (called when a request ends)."""
        for pipe in self._pipes:
            if not pipe.closed:
                self._collect(pipe.drain())
            self._collect(pipe.flush_partial())

    def _collect(self, lines: list[tuple[str, str]]) -> None:
        for stream, text in lines:
            self.add_line(stream, text)

    @property
    def request_id(self) -> str:
        """The request untagged output belongs to: the only one running, else none."""
        return self.active[0] if len(self.active) == 1 else ""

    def add_line(self, stream: str, text: str, request_id: str | None = None) -> None:
        owner = self.request_id if request_id is None else request_id
        lines = self.lines.setdefault(owner, [])
        if len(lines) >= self._max_lines:
            self.dropped_lines[owner] = self.dropped_lines.get(owner, 0) + 1
            return
        lines.append(LogLine(time.time(), owner, self.id, stream, text))

    def take_lines(self, request_id: str = "") -> list[LogLine]:
        lines = self.lines.pop(request_id, [])
        dropped = self.dropped_lines.pop(request_id, 0)
        if dropped:
            lines.append(LogLine(time.time(), request_id, self.id, "platform", f"{dropped} log lines dropped"))
        return lines

    def take_all_lines(self) -> list[LogLine]:
        return [line for owner in list(self.lines) for line in self.take_lines(owner)]

    def kill(self) -> None:
        """Kill every process of the instance (its whole cgroup); idempotent."""
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        if self.cgroup is not None and self.sandbox is not None and self.sandbox.cgroups is not None:
            try:
                self.sandbox.cgroups.kill(self.cgroup)
                return
            except CgroupError:
                pass  # not created or already gone: fall back to the process group
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        if self._peak_fd >= 0:
            os.close(self._peak_fd)
            self._peak_fd = -1
        if self._socket is not None:
            self._socket.close()
        for pipe in self._pipes:
            if pipe.fd >= 0:
                # Wake a pump blocked on this fd before closing it.
                trio.lowlevel.notify_closing(pipe.fd)
                os.close(pipe.fd)
                pipe.fd = -1
                pipe.closed = True

    async def exit_reason(self) -> str:
        """A sentence saying how the process ended, from the zygote's report."""
        if self.zygote.generation != self.zygote_generation or not self.zygote.ready.is_set():
            return "the runtime's zygote exited and took the instance with it"
        code = await self.zygote.wait_exit(self.pid, EXIT_REPORT_WAIT)
        if code is None:
            return "the function's process ended unexpectedly"
        if code < 0:
            return f"the function's process was killed by signal {signal.Signals(-code).name}"
        return f"the function's process exited with status {code}"

    # Frames ------------------------------------------------------------------

    async def send(self, frame: protocol.Frame) -> None:
        assert self._socket is not None
        data = memoryview(protocol.encode(frame))
        try:
            # Concurrent requests must not interleave their frames.
            async with self._send_lock:
                while data:
                    sent = await self._socket.send(data)
                    data = data[sent:]
        except OSError as exc:
            raise InstanceGone(f"cannot write to the instance: {exc}") from None

    async def result(self, request_id: str) -> protocol.Frame:
        """The answer to `request_id`. Whoever waits and finds no one reading reads for everyone."""
        while True:
            if request_id in self._results:
                return self._results.pop(request_id)
            if self._gone is not None:
                raise InstanceGone(self._gone)
            if self._reading:
                event = self._waiting[request_id] = trio.Event()
                try:
                    await event.wait()
                except BaseException:
                    if self._waiting.get(request_id) is event:
                        del self._waiting[request_id]
                    elif not self._reading:
                        self._hand_over()  # we were handed the reading and are leaving: pass it on
                    raise
                continue
            self._reading = True
            try:
                frame = await self.receive()
                if not isinstance(frame, protocol.Result):
                    raise InstanceGone(f"the instance answered with an unexpected {type(frame).__name__} frame")
                if frame.request_id == request_id:
                    return frame
                self._results[frame.request_id] = frame
                waiter = self._waiting.pop(frame.request_id, None)
                if waiter is not None:
                    waiter.set()
            except InstanceGone as gone:
                self._gone = self.kill_reason or gone.message
                raise InstanceGone(self._gone) from None
            finally:
                self._reading = False
                self._hand_over()

    def _hand_over(self) -> None:
        """Wake one waiter to read next (or all of them, if the instance is gone)."""
        if self._gone is not None:
            for waiter in self._waiting.values():
                waiter.set()
            self._waiting.clear()
        elif self._waiting:
            self._waiting.pop(next(iter(self._waiting))).set()

    async def receive(self) -> protocol.Frame:
        """Next frame that is not a Log; Log frames are collected as log lines."""
        assert self._socket is not None
        while True:
            while self._frames:
                frame = self._frames.pop(0)
                if isinstance(frame, protocol.Log):
                    if frame.level in ("stdout", "stderr"):
                        self.add_line(frame.level, frame.message, frame.request_id)
                    else:
                        self.add_line("logger", f"[{frame.level}] {frame.message}", frame.request_id)
                    continue
                return frame
            try:
                data = await self._socket.recv(READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                raise InstanceGone(await self.exit_reason())
            try:
                self._frames.extend(self._buffer.feed(data))
            except protocol.ProtocolError as exc:
                raise InstanceGone(f"the instance broke the protocol: {exc}") from None
