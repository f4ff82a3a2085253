"""Daemon side of one function instance: its socket, its output pipes, its life.

An instance is forked by a zygote, specialised once for one function revision,
then serves invocations one at a time. Its stdout and stderr are pipes read by
the daemon, so output of any process it starts is attributed to the request
that was running when the bytes arrived.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable

import trio

from fgd.demux import Demultiplexer
from fgd.instance_output import InstanceOutput, LogLimits
from fgd.output import OutputPipe
from fgd.sandboxing import HostSandbox
from fgd.store import LogLine
from fgd.zygote import Zygote
from runtimes import protocol
from sandbox.cgroups import CgroupError, Limits, parse_key_value

READ_CHUNK = 1 << 16
# A memory peak at this share of the limit may come with an OOM kill (fgd.instance._oom_possible).
OOM_NEAR_LIMIT = 0.9
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


def signal_name(number: int) -> str:
    """SIGKILL, or SIGRTMIN+6 / "34" for a number the enum does not name (real-time signals)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return str(number)


def _create_and_place(cgroups, name: str, pid: int, limits: Limits) -> dict[str, int]:
    """The instance's cgroup, made and joined; the descriptors of the counters every invocation
    reads (Instance._read_counter), opened now: the first open of a file of a new cgroup costs
    about 0.1 ms, which a cold start would otherwise pay twice (issue 15)."""
    cgroups.create(name)
    cgroups.set_limits(name, limits)
    cgroups.place(name, pid)
    counters: dict[str, int] = {}
    for which in COUNTERS:
        with contextlib.suppress(OSError):  # else opened when first read (None if it cannot be)
            counters[which] = _open_counter(cgroups, name, which)
    return counters


# The cgroup files read on every invocation: the OOM kills (flat-keyed, `oom_kill`) and the memory peak.
COUNTERS = {
    "oom": lambda cgroups, name: cgroups.oom_events_path(name),
    "peak": lambda cgroups, name: cgroups.memory_peak_path(name),
}


def _open_counter(cgroups, name: str, which: str) -> int:
    return os.open(COUNTERS[which](cgroups, name), os.O_RDONLY | os.O_CLOEXEC)


class Instance:
    def __init__(self, zygote: Zygote, log_limits: LogLimits, sandbox: HostSandbox | None = None) -> None:
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
        # (project, package, name, version, alias): never reused for another (fgd.versions).
        self.qualifier: tuple[str, str, str, str, str] = ("", "", "", "latest", "")
        # Its version or alias went or moved: not handed out again.
        self.retired = False
        self.init_ms: float | None = None
        # sha256 of the code and dependency trees this instance mounts.
        self.packages: set[str] = set()
        # Kept-open descriptors of cgroup files read per invocation (memory peak, OOM kills).
        self._counter_fds: dict[str, int] = {}
        # The limits written on its cgroup (None: none yet).
        self.limits: Limits | None = None
        self._oom_baseline = 0
        # The cgroup's memory peak when last read (None: not read yet, or unreadable).
        self._peak_bytes: int | None = None
        self.last_used = time.monotonic()
        # Which request each frame from the instance's socket belongs to (sans-IO).
        self._demux = Demultiplexer(protocol.MAX_UP_FRAME)
        # Its stdout and stderr, and the transcripts of its requests.
        self.output = InstanceOutput(self.id, self._demux.running, log_limits)
        self.kill_reason = ""
        # Issue 12: which agency credentials (name, generation) the instance holds (fgd.agencies).
        self.credentials_token: tuple[str, int] = ("", 0)
        # Kept started and warm for the function (reserved instances), never reaped.
        self.reserved = False
        # Tasks waiting for their answer while another reads the socket, by request id.
        self._wakers: dict[str, trio.Event] = {}
        # Why the instance is gone, once its reader learnt it or `interrupt` said so: no task
        # waits on its socket again (one already woken by data when `interrupt` came included).
        self._gone: str | None = None
        self._send_lock = trio.Lock()
        self._socket: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None

    # Life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Fork from the zygote with a fresh socketpair and output pipes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.output.attach([OutputPipe(out_r, "stdout"), OutputPipe(err_r, "stderr")])
        self._socket = trio.socket.from_stdlib_socket(ours)
        self._raw = ours  # the same socket, non-blocking now: for a send that needs no wait
        self.zygote_generation = self.zygote.generation
        try:
            # Issue 15: a contained instance is forked as PID 1 of its own pid namespace.
            namespaced = self.sandbox is not None and self.sandbox.protections.namespaces
            self.pid = await self.zygote.fork(self.id, [theirs.fileno(), out_w, err_w], pid_namespace=namespaced)
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)

    async def contain(self, memory_size: int | None = None, lap: Callable[[str], None] = lambda step: None) -> None:
        """Step 1 (cgroup placement) here, then the generic sandbox steps in the instance; `lap`
        is told when each is done.

        With `memory_size`, the cgroup gets that size's limits now, off the request path: a
        function of that size is specialised without writing any (issue 15)."""
        sandbox = self.sandbox
        if sandbox is None:
            return
        try:
            if self.cgroup is not None and sandbox.cgroups is not None:
                cgroups, name, pid = sandbox.cgroups, self.cgroup, self.pid
                limits = sandbox.limits_for(memory_size)
                # A v1 cgroup move can stall for milliseconds: keep it off the event loop.
                counters = await trio.to_thread.run_sync(_create_and_place, cgroups, name, pid, limits)
                if self.state is State.DEAD:
                    # Closed meanwhile (shutdown, its zygote died): nobody will close these.
                    for fd in counters.values():
                        os.close(fd)
                else:
                    self._counter_fds.update(counters)
                self.limits = limits
        except CgroupError as exc:
            raise InstanceGone(f"cannot put the instance into its cgroup: {exc}") from None
        lap("cgroup_place")
        if not sandbox.protections.namespaces:
            return
        # Per interpreter: its own library is bound into the sandbox (fgd.zygote, issue 12).
        await self.send(protocol.Contain(self.zygote.contain_policy(sandbox.contain_policy)))
        frame = await self.receive()
        if isinstance(frame, protocol.ContainError):
            raise InstanceGone(f"the sandbox could not be built: {frame.message}")
        if not isinstance(frame, protocol.Contained):
            raise InstanceGone(f"unexpected {type(frame).__name__} while building the sandbox")
        lap("contain")

    async def launch(self, frame: protocol.Launch) -> None:
        """Issue 13 (nodejs): start the language's own process in the contained instance and
        wait until it runs (fgd.nodejs, runtimes/nodejs/keeper.py)."""
        await self.send(frame)
        reply = await self.receive()
        if isinstance(reply, protocol.ContainError):
            raise InstanceGone(f"the runtime could not start: {reply.message}")
        if not isinstance(reply, protocol.Launched):
            raise InstanceGone(f"unexpected {type(reply).__name__} while starting the runtime")

    def set_limits(self, limits: Limits) -> None:
        """The function's limits on the instance's cgroup; nothing is written when they are set already."""
        if limits == self.limits:
            return
        if self.cgroup is not None and self.sandbox is not None and self.sandbox.cgroups is not None:
            try:
                self.sandbox.cgroups.set_limits(self.cgroup, limits)
            except CgroupError as exc:
                raise InstanceGone(f"cannot set the instance's limits: {exc}") from None
            self.limits = limits

    def oom_kills(self) -> int:
        """The kernel's count of OOM kills in this instance's cgroup (0 without one)."""
        text = self._read_counter("oom", 256)
        return parse_key_value(text, "oom_kill") if text is not None else 0

    def oom_killed(self) -> bool:
        """Whether the OOM killer acted here since the current requests began (not in an earlier one)."""
        return self.oom_kills() > self._oom_baseline

    def memory_peak_mb(self) -> float | None:
        """Peak memory charged to the instance's cgroup."""
        text = self._read_counter("peak", 32)
        try:
            self._peak_bytes = int(text) if text is not None else None
        except ValueError:
            self._peak_bytes = None
        return self._peak_bytes / (1024 * 1024) if self._peak_bytes is not None else None

    def _oom_possible(self) -> bool:
        """Whether the OOM killer may have acted since the count was last read. It acts only
        when the cgroup's memory reaches its limit, so while the peak (read after every request)
        stays clearly below, the count cannot have moved and is not read again: one cgroup read
        per invocation instead of two. (A process growing to the limit while the instance is idle
        is seen by the next request's baseline only once a peak shows it.)"""
        peak, limits = self._peak_bytes, self.limits
        return peak is None or limits is None or peak >= limits.memory_bytes * OOM_NEAR_LIMIT

    def _read_counter(self, which: str, size: int) -> str | None:
        """A cgroup file read on every invocation, through a descriptor kept open (a tenth of the
        cost of opening it each time); None without a cgroup or once it is gone."""
        if self.cgroup is None or self.sandbox is None or self.sandbox.cgroups is None:
            return None
        try:
            fd = self._counter_fds.get(which)
            if fd is None:
                fd = self._counter_fds[which] = _open_counter(self.sandbox.cgroups, self.cgroup, which)
            return os.pread(fd, size, 0).decode()
        except (OSError, CgroupError):
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

    @property
    def active(self) -> list[str]:
        """Requests running on the instance now; output from its pipes goes to the one
        running (to none when several run: their prints come tagged as Log frames)."""
        return self._demux.running

    def begin(self, request_id: str) -> None:
        """`request_id` starts running here: its output is kept from now on."""
        if not self.active and self._oom_possible():
            # A child killed for memory in an earlier request must not make a later crash an OOM.
            self._oom_baseline = self.oom_kills()
        self._demux.begin(request_id)
        self.output.begin()

    def end(self, request_id: str) -> list[LogLine]:
        """`request_id` finished: its transcript; later output for it counts as late."""
        self._demux.end(request_id)
        return self.output.end(request_id)

    # What it prints (fgd.instance_output) ----------------------------------------------

    @property
    def on_late(self) -> Callable[[list[LogLine]], None] | None:
        return self.output.on_late

    @on_late.setter
    def on_late(self, on_late: Callable[[list[LogLine]], None] | None) -> None:
        self.output.on_late = on_late

    async def pump_output(self) -> None:
        await self.output.pump()

    def collect_output(self) -> None:
        self.output.collect()

    def add_line(self, stream: str, text: str, request_id: str | None = None) -> None:
        self.output.add_line(stream, text, request_id)

    def take_lines(self, request_id: str = "") -> list[LogLine]:
        return self.output.take_lines(request_id)

    def take_all_lines(self) -> list[LogLine]:
        return self.output.take_all_lines()

    def exited(self) -> bool:
        """The zygote reported its exit, or the zygote itself died (and took it along)."""
        zygote = self.zygote
        return self.zygote_generation != zygote.generation or self.pid in zygote.exit_codes

    def unusable(self) -> bool:
        """Known to be unusable: killed, exited, or of a zygote that died (restarting or replaced)."""
        return self.state is State.DEAD or not self.zygote.ready.is_set() or self.exited()

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

    def interrupt(self) -> None:
        """Wake every task waiting to read or write the instance's socket: each finds the
        instance gone (with `kill_reason`). The socket stays open until `close`."""
        self._gone = self.kill_reason or "the instance was interrupted"
        raw = self._raw
        if raw is not None and raw.fileno() >= 0:
            trio.lowlevel.notify_closing(raw)

    def close(self) -> None:
        self.kill()
        for fd in self._counter_fds.values():
            os.close(fd)
        self._counter_fds.clear()
        if self._socket is not None:
            self._socket.close()
        self.output.close()

    async def exit_reason(self) -> str:
        """A sentence saying how the process ended, from the zygote's report."""
        if self.zygote.generation != self.zygote_generation or not self.zygote.ready.is_set():
            return "the runtime's zygote exited and took the instance with it"
        code = await self.zygote.wait_exit(self.pid, EXIT_REPORT_WAIT)
        if code is None:
            # Its end of the socket closed, yet no exit was reported: it closed the descriptor
            # itself and may still run (it is killed with its instance).
            return f"the function's process closed its connection to fgd and had not exited {EXIT_REPORT_WAIT} s later"
        if code < 0:
            return f"the function's process was killed by signal {signal_name(-code)}"
        return f"the function's process exited with status {code}"

    # Frames ------------------------------------------------------------------

    async def send(self, frame: protocol.Frame) -> None:
        assert self._socket is not None and self._raw is not None
        data = memoryview(protocol.encode(frame))
        lock = self._send_lock
        try:
            if lock.locked():
                await lock.acquire()  # concurrent requests must not interleave their frames
            else:
                # Nobody else is sending: almost every frame goes whole at once, with no wait.
                try:
                    sent = self._raw.send(data)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
                lock.acquire_nowait()  # the rest goes before any other frame
            try:
                while data:
                    if self._gone is not None:
                        raise InstanceGone(self._gone)
                    sent = await self._socket.send(data)
                    data = data[sent:]
            finally:
                lock.release()
        except (OSError, trio.ClosedResourceError) as exc:
            # Closed under us (another request's timeout recycled the instance) or the process is gone.
            raise InstanceGone(self.kill_reason or f"cannot write to the instance: {exc}") from None

    async def result(self, request_id: str) -> protocol.Frame:
        """The answer to `request_id`. Whoever waits and finds no one reading reads for everyone."""
        demux = self._demux
        while True:
            held = demux.take(request_id)
            if held is not None:
                return held
            if self._gone is not None:
                raise InstanceGone(self._gone)
            if demux.reading:
                event = self._wakers[request_id] = trio.Event()
                demux.wait(request_id)
                try:
                    await event.wait()
                except BaseException:
                    if demux.stop_waiting(request_id):
                        self._wakers.pop(request_id, None)
                    elif not demux.reading:
                        self._hand_over()  # we were handed the reading and are leaving: pass it on
                    raise
                continue
            demux.reading = True
            try:
                frame = await self.receive()
                if not isinstance(frame, protocol.Result):
                    raise InstanceGone(f"the instance answered with an unexpected {type(frame).__name__} frame")
                try:
                    demux.check_answer(frame)
                except protocol.ProtocolError as exc:
                    raise InstanceGone(f"the instance broke the protocol: {exc}") from None
                if frame.request_id == request_id:
                    return frame
                demux.hold(frame)
                if demux.answered(frame.request_id):
                    self._wake(frame.request_id)
            except InstanceGone as gone:
                self._gone = self.kill_reason or gone.message
                raise InstanceGone(self._gone) from None
            finally:
                demux.reading = False
                self._hand_over()

    def _wake(self, request_id: str) -> None:
        event = self._wakers.pop(request_id, None)
        if event is not None:
            event.set()

    def _hand_over(self) -> None:
        """Wake one waiter to read next (or all of them, if the instance is gone)."""
        if self._gone is not None:
            for request_id in self._demux.wake_all():
                self._wake(request_id)
        else:
            request_id = self._demux.next_reader()
            if request_id is not None:
                self._wake(request_id)

    async def receive(self) -> protocol.Frame:
        """Next frame that is not a Log; Log frames are collected as log lines."""
        assert self._socket is not None
        while True:
            try:
                frame = self._demux.next_frame()
            except protocol.ProtocolError as exc:
                raise InstanceGone(f"the instance broke the protocol: {exc}") from None
            if isinstance(frame, protocol.Log):
                self._log_frame(frame)
                continue
            if frame is not None:
                return frame
            data = await self._recv()
            if not data:
                raise InstanceGone(self.kill_reason or await self.exit_reason())
            try:
                self._demux.feed(data)
            except protocol.ProtocolError as exc:
                raise InstanceGone(f"the instance broke the protocol: {exc}") from None

    async def _recv(self) -> bytes:
        """The next bytes from the instance (b"" once it closed its end). The wait comes first: the
        answer is never there yet when we start to wait (it needs a round trip through another
        process), and a read that fails costs a system call and an exception per frame."""
        raw = self._raw
        assert raw is not None
        while True:
            if self._gone is not None:
                # Interrupted while this task was not waiting (woken by data in the same batch as
                # the timeout task): the end of file may never come, if a process that escaped the
                # kill (no cgroups) still holds the instance's end of the socket.
                raise InstanceGone(self._gone)
            if raw.fileno() < 0:
                raise InstanceGone(self.kill_reason or "the instance was closed")
            try:
                await trio.lowlevel.wait_readable(raw)
                return raw.recv(READ_CHUNK)
            except BlockingIOError:
                continue  # woken with nothing to read after all
            except trio.ClosedResourceError:
                raise InstanceGone(self.kill_reason or "the instance was closed") from None
            except OSError:
                return b""

    def _log_frame(self, frame: protocol.Log) -> None:
        if frame.level in ("stdout", "stderr"):
            self.add_line(frame.level, frame.message, frame.request_id)
        else:
            self.add_line("logger", f"[{frame.level[:16]}] {frame.message}", frame.request_id)
