"""Daemon side of the zygotes: start them, supervise them, ask them to fork.

A zygote is a child of the daemon connected by a SOCK_SEQPACKET socketpair.
`fork()` sends the instance's descriptors with a `Fork` packet and waits for
`Forked`; the zygote also reports `Exited` for every instance it reaps, which
turns an instance's end-of-file into a precise exit status.

There is one zygote per Python interpreter in use (fgd.interpreters), started by
`Zygotes.get` on the first cold start of a function it serves, not at boot: an
interpreter nobody uses costs nothing.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

import msgspec
import trio

from fgd.errors import Unavailable
from fgd.interpreters import Catalogue, Interpreter, is_nodejs, zygote_environment
from runtimes import protocol
from sandbox.policy import ContainPolicy, Mount

log = logging.getLogger("fgd.zygote")

RESTART_DELAY = 0.5
MAX_REMEMBERED_EXITS = 4096


class ZygoteUnavailable(Exception):
    """The zygote is not running (starting, restarting or shut down)."""


class Zygote:
    def __init__(
        self,
        runtime: str,
        argv: Sequence[str],
        environment: dict[str, str] | None = None,
        *,
        interpreter: Interpreter | None = None,
        seccomp_programs: dict[str, bytes] | None = None,
    ) -> None:
        # The key of the interpreter it runs ("python3.12"): names its pool too.
        self.runtime = runtime
        self.interpreter = interpreter
        self._argv = list(argv)
        self.argv0 = self._argv[0] if self._argv else ""
        # The zygote starts from an empty environment plus this: never the daemon's (the
        # operator's shell variables, credentials), which every instance would inherit.
        self._environment = zygote_environment(interpreter) if environment is None else environment
        # Built once by the daemon, handed to every zygote: each instance loads one as its
        # last containment step. (pyseccomp and the filter builder need not run everywhere.)
        self._seccomp = msgspec.msgpack.encode(seccomp_programs) if seccomp_programs is not None else None
        self._policy: tuple[ContainPolicy, ContainPolicy] | None = None
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
            passed = [child.fileno()]
            if self._seccomp is not None:
                programs = seccomp_memfd(self._seccomp)
                argv.append(f"--seccomp-fd={programs}")
                passed.append(programs)
            # Spawned from this (the main) thread on purpose: the zygote's pdeathsig
            # fires when the *thread* that forked it exits, and trio's open_process
            # forks from a worker thread that is retired after idling for a while.
            # Its own session: a terminal's Ctrl-C or a group-wide SIGTERM is for the
            # daemon, which decides when zygotes and instances stop.
            try:
                process = subprocess.Popen(
                    argv,
                    pass_fds=passed,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=self._environment,
                )
            except OSError as exc:
                parent.close()
                child.close()
                if not started:
                    raise  # the first start: the cold start that asked for it says why
                # The interpreter went away under a running daemon (uninstalled): keep trying,
                # its functions get 503s meanwhile, the daemon and the other zygotes go on.
                log.error("cannot restart the %s zygote (%s): %s", self.runtime, argv[0], exc)
                await trio.sleep(RESTART_DELAY * 10)
                continue
            finally:
                for fd in passed[1:]:
                    os.close(fd)
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

    async def fork(self, instance_id: str, fds: Sequence[int], *, pid_namespace: bool = False) -> int:
        """Fork an instance that inherits `fds` (socket, stdout, stderr); return its pid.

        With `pid_namespace` the instance is PID 1 of a new pid namespace (it will be contained):
        the pid returned is the sandbox's PID 1, whose exit the zygote reports as its worker's."""
        async with self._fork_lock:
            control = self._control
            if control is None:
                raise ZygoteUnavailable(f"the {self.runtime} zygote is restarting")
            done = self._fork_done[instance_id] = trio.Event()
            packet = protocol.encode_packet(protocol.Fork(instance_id, pid_namespace))
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

    def contain_policy(self, base: ContainPolicy) -> ContainPolicy:
        """`base` with this zygote's interpreter bound into the sandbox instead of the daemon's."""
        if self.interpreter is None:
            return base
        if self._policy is None or self._policy[0] is not base:
            self._policy = (base, interpreter_policy(base, self.interpreter.prefix))
        return self._policy[1]


def seccomp_memfd(data: bytes) -> int:
    """A descriptor (inheritable, read from its start) holding `data`."""
    fd = os.memfd_create("fgd-seccomp-programs", 0)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _covered(path: str, mounts: Sequence[Mount]) -> bool:
    return any(path == m.source or path.startswith(m.source.rstrip("/") + "/") for m in mounts)


def interpreter_policy(base: ContainPolicy, prefix: str) -> ContainPolicy:
    """The sandbox's mounts for an interpreter installed under `prefix`: its own library only.

    The base policy binds the daemon's interpreter prefix when it lies outside the host
    directories (a pyenv or /opt install); an instance of another interpreter needs its own
    and has no use for the daemon's.
    """
    own = os.path.realpath(sys.base_prefix)
    mounts = [m for m in base.root_mounts if not (m.source == own and m.target == own and own != prefix)]
    if not _covered(prefix, mounts):
        mounts.append(Mount(prefix, prefix))
    return msgspec.structs.replace(base, root_mounts=mounts)


def python_zygote(interpreter: Interpreter, *, seccomp_programs: dict[str, bytes] | None) -> Zygote:
    """A zygote of `interpreter` (not started)."""
    # -s: not the user's site-packages of whoever installed the interpreter.
    argv = [interpreter.path, "-s", "-m", "runtimes.python.zygote"]
    return Zygote(interpreter.key, argv, interpreter=interpreter, seccomp_programs=seccomp_programs)


class Zygotes:
    """The zygotes of the interpreters in use, each started on the first cold start that needs it."""

    def __init__(self, catalogue: Catalogue, *, seccomp_programs: dict[str, bytes] | None) -> None:
        self.catalogue = catalogue
        self._seccomp_programs = seccomp_programs
        # By interpreter key ("python3.12"); a zygote is here from the moment it starts starting.
        self.running: dict[str, Zygote] = {}
        # Called with each zygote once it runs (the invoker starts its pool).
        self.on_start: list[Callable[[Zygote], None]] = []
        # Issue 13 (nodejs): whether Node sandboxes show FunctionGraph's bundled Node modules.
        self.nodejs_bundled = True
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the zygotes' tasks until cancelled (which stops them all)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def state(self, interpreter: Interpreter) -> str:
        zygote = self.running.get(interpreter.key)
        if zygote is None or zygote.interpreter != interpreter:
            return "not started"
        if zygote.pid is None:
            return "starting"
        return "ready" if zygote.ready.is_set() else "restarting"

    def node_state(self, key: str) -> str:
        """Issue 13 (nodejs): `state` for the Node pools of one node ("node20"; one pool per memory
        size): "restarting" if one is, "ready" if one runs, else "starting" or "not started"."""
        states = set()
        for name, zygote in self.running.items():
            if name.startswith(f"{key}-"):
                states.add("starting" if zygote.pid is None else "ready" if zygote.ready.is_set() else "restarting")
        for state in ("restarting", "ready", "starting"):
            if state in states:
                return state
        return "not started"

    async def get(self, runtime: str, memory_size: int = 0) -> Zygote:
        """The zygote serving `runtime`, started now if this is its first use."""
        if is_nodejs(runtime):
            return await self._get_nodejs(runtime, memory_size)  # Issue 13 (nodejs)
        interpreter = self.catalogue.serving(runtime)
        if interpreter is None:
            raise Unavailable(self.catalogue.refusal(runtime))
        assert isinstance(interpreter, Interpreter)
        # Issue 13: Custom and http functions have their own pool of the daemon's interpreter.
        from fgd import custom

        key = custom.POOL if custom.mode_of(runtime) != "python" else interpreter.key
        zygote = self.running.get(key)
        if zygote is not None:
            return zygote
        if key == custom.POOL:
            return await self._start(custom.custom_zygote(interpreter, self.catalogue, self._seccomp_programs))
        return await self._start(python_zygote(interpreter, seccomp_programs=self._seccomp_programs))

    async def _get_nodejs(self, runtime: str, memory_size: int) -> Zygote:
        """Issue 13 (nodejs): the zygote of the Node pool for functions of `memory_size` MB: the
        daemon interpreter's, whose instances are launched into a contained node whose V8 heap
        is sized for that memory (fgd.nodejs)."""
        from fgd.nodejs import DEFAULT_MEMORY_MB, NodeZygote, pool_key

        node = self.catalogue.nodejs.serving(runtime) if self.catalogue.nodejs is not None else None
        if node is None:
            raise Unavailable(self.catalogue.refusal(runtime))
        memory_mb = memory_size or DEFAULT_MEMORY_MB
        zygote = self.running.get(pool_key(node, memory_mb))
        if zygote is not None:
            return zygote
        own = next((i for i in self.catalogue.interpreters if i.origin == "daemon" and i.usable), None)
        if own is None:
            raise Unavailable(f"runtime {runtime} is not available: the daemon's own interpreter cannot run the shim")
        argv = [own.path, "-s", "-m", "runtimes.python.zygote"]
        zygote = NodeZygote(
            node, own, argv, memory_mb=memory_mb, seccomp_programs=self._seccomp_programs, bundled=self.nodejs_bundled
        )
        return await self._start(zygote)

    async def _start(self, zygote: Zygote) -> Zygote:
        key = zygote.runtime
        if self._nursery is None:
            raise Unavailable(f"runtime {key} is not available: the daemon is shutting down")
        # Registered before it has started, so concurrent cold starts share it (they wait on ready).
        self.running[key] = zygote
        try:
            await self._nursery.start(zygote.run)
        except OSError as exc:
            del self.running[key]
            zygote.ready.set()  # wake whoever waits on it: their fork fails and says so
            raise Unavailable(f"cannot start the {key} zygote ({zygote.argv0}): {exc}") from None
        interpreter = zygote.interpreter
        if interpreter is not None:
            log.info("started the %s zygote (%s, Python %s)", key, interpreter.path, interpreter.version)
        for hook in self.on_start:
            hook(zygote)
        return zygote
