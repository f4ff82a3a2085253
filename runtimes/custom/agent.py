"""The agent of a Custom or http instance: starts `bootstrap` and bridges frames to it.

A Custom (`runtime: Custom`) or HTTP (`runtime: http`) function is specialised
from an ordinary pooled Python instance of the daemon's interpreter: it gets a
`Specialize` frame whose `mode` is "custom" or "http" and runs `serve` below
instead of importing a handler. The agent

1. (custom) opens the runtime API's listening socket on 127.0.0.1 while it is
   still privileged: the "event" seccomp profile, which the Custom runtime keeps
   (its functions may not accept connections, as on FunctionGraph), denies
   listen(), so the socket is made before `enter` loads the filter and is kept
   open across it. The bootstrap cannot listen; only the agent's socket exists.
   (http functions get the "http" profile: their server listens itself.)
2. applies `enter` (code mounted, own uid, no capabilities, rlimits, seccomp);
3. starts `/opt/function/code/bootstrap` (cwd the code directory, environment
   the function's variables + FunctionGraph's RUNTIME_* + RUNTIME_API_ADDR) as
   its child, its output through pipes the agent reads;
4. is ready when the bootstrap asks for work (custom: its first GET of the
   runtime API) or its server accepts connections on 127.0.0.1:8000 (http),
   within the initializer timeout;
5. then serves Invoke frames: handed to the bootstrap's GETs (runtime.py) or
   sent as HTTP requests to its server (http.py).

The bootstrap's output is sent as log lines of the request it belongs to: the
only request it is working on, or, when it works on several at once, the one
whose id the line names; other lines go to the instance's own output, which the
daemon attributes as it does for any process of a Python function.

If the bootstrap exits, every request the instance holds fails with
`Runtime.ExitError` naming its exit status and last output, and the instance
ends (a `fatal` Result: the daemon does not reuse it).

Runs on the daemon's interpreter only, but keeps to Python 3.9 like the rest of
the instance side.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, NoReturn

from runtimes import protocol
from runtimes.protocol import FunctionError, Result, Specialize
from sandbox.contain import ContainmentFailed, enter

BOOTSTRAP = "bootstrap"
# How much of the bootstrap's last output an error message quotes.
TAIL_BYTES = 2000
# The agent reports a start that takes too long itself (with the bootstrap's output) a little
# before the daemon's own deadline would end it with a bare "did not finish".
INIT_MARGIN = 0.2
# How long an exiting instance waits for answers being sent when its bootstrap exited.
CLAIM_WAIT = 0.5
RSS_EVERY = 0.1
LISTEN_BACKLOG = 512


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with status {returncode}"


class Output:
    """The bootstrap's stdout and stderr: split into lines, attributed, the last ones kept."""

    def __init__(self, conn, owner_of: Callable[[str], str]) -> None:
        self._conn = conn
        self._owner_of = owner_of
        self._lock = threading.Lock()
        self._pipes: dict[int, tuple] = {}
        self._partial: dict[int, bytearray] = {}
        self._tail: collections.deque[str] = collections.deque()
        self._tail_size = 0
        self.closed = threading.Event()

    def pipes(self) -> tuple:
        """(stdout, stderr) write ends for the bootstrap."""
        ends = []
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            read, write = os.pipe2(os.O_CLOEXEC)
            flags = fcntl.fcntl(read, fcntl.F_GETFL)
            fcntl.fcntl(read, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self._pipes[read] = (stream, fd)
            self._partial[read] = bytearray()
            ends.append(write)
        return tuple(ends)

    def run(self) -> None:
        """Read until both pipes close (a thread)."""
        while True:
            with self._lock:
                open_fds = list(self._pipes)
            if not open_fds:
                break
            try:
                readable, _, _ = select.select(open_fds, [], [])
            except OSError:
                break
            with self._lock:
                for fd in readable:
                    self._read(fd)
        self.closed.set()

    def drain(self) -> None:
        """Take in everything the pipes hold now, partial lines too (before a request's answer)."""
        with self._lock:
            try:
                # One system call to learn that nothing is waiting (the common case), rather
                # than a failed read per pipe.
                waiting, _, _ = select.select(list(self._pipes), [], [], 0)
            except (OSError, ValueError):
                waiting = list(self._pipes)
            for fd in list(self._pipes):
                if fd in waiting:
                    self._read(fd)
                partial = self._partial.get(fd)
                if partial:
                    self._line(fd, bytes(partial))
                    partial.clear()

    def _read(self, fd: int) -> None:
        while fd in self._pipes:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                partial = self._partial.pop(fd)
                if partial:
                    self._line(fd, bytes(partial))
                del self._pipes[fd]
                os.close(fd)
                return
            partial = self._partial[fd]
            partial += chunk
            *lines, rest = partial.split(b"\n")
            if len(rest) > protocol.MAX_LOG_LINE:
                lines.append(bytes(rest))  # a line without end: sent (and cut) now, not kept growing
                rest = b""
            self._partial[fd] = bytearray(rest)
            for line in lines:
                self._line(fd, line)

    def _line(self, fd: int, data: bytes) -> None:
        stream, own_fd = self._pipes.get(fd, ("stdout", 1))
        text = data.decode(errors="replace")
        self._tail.append(text)
        self._tail_size += len(text) + 1
        while self._tail_size > TAIL_BYTES and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft()) + 1
        owner = self._owner_of(text)
        if owner:
            self._conn.send(protocol.log_line(owner, stream, text))
        else:
            # Nobody's in particular: the instance's own output, attributed by the daemon.
            with contextlib.suppress(OSError):
                os.write(own_fd, data + b"\n")

    def tail(self) -> str:
        with self._lock:
            text = "\n".join(self._tail)
        return text[-TAIL_BYTES:]


class Agent:
    """What both modes share: the bootstrap, its output, which requests it holds."""

    def __init__(self, conn, spec: Specialize, code_dir: str) -> None:
        self.conn = conn
        self.spec = spec
        self.code_dir = code_dir
        self.started = time.monotonic()
        self.lock = threading.Lock()
        # Requests the bootstrap works on now (handed out, not answered), in the order given.
        self.active: list[str] = []
        self.ready = False
        self.dead = False
        # Requests whose answer is being sent: the bootstrap's exit must not answer them again.
        self.claimed: set[str] = set()
        self.output = Output(conn, self.owner_of)
        self.process: subprocess.Popen | None = None
        # The agency's credentials; an Invoke frame brings new ones when they were renewed.
        self.credentials = dict(spec.identity.credentials)

    def owner_of(self, line: str) -> str:
        with self.lock:
            active = list(self.active)
        if len(active) == 1:
            return active[0]
        for request_id in active:
            if request_id in line:
                return request_id
        return ""

    def bootstrap_path(self) -> str:
        return os.path.join(self.code_dir, BOOTSTRAP)

    def check_bootstrap(self) -> str | None:
        path = self.bootstrap_path()
        if not os.path.isfile(path):
            return f"the code has no file {BOOTSTRAP!r} at its root: a {self.spec.mode} function starts it"
        if not os.access(path, os.X_OK):
            return f"{BOOTSTRAP!r} is not executable (chmod +x it before packaging)"
        return None

    def start(self, environ: dict[str, str]) -> None:
        out, err = self.output.pipes()
        try:
            self.process = subprocess.Popen(
                [self.bootstrap_path()],
                # Relative to the working directory: without mounts the code directory is one of
                # our descriptors (/proc/self/fd/N), which the child closes before it executes.
                executable=f"./{BOOTSTRAP}",
                cwd=self.code_dir,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
            )
        finally:
            os.close(out)
            os.close(err)
        threading.Thread(target=self.output.run, name="bootstrap-output", daemon=True).start()
        threading.Thread(target=self._watch, name="bootstrap-watch", daemon=True).start()

    def _watch(self) -> None:
        assert self.process is not None
        code = self.process.wait()
        # Its last words: the pipes close with it (unless a child of its keeps them open).
        self.output.closed.wait(0.2)
        self.output.drain()
        message = f"bootstrap {exit_description(code)}"
        tail = self.output.tail()
        if tail:
            message += f"; its last output:\n{tail}"
        self.bootstrap_exited(message)

    def bootstrap_exited(self, message: str) -> NoReturn:
        with self.lock:
            self.dead = True
            ready = self.ready
            holding = self.holding()
        if not ready:
            self.conn.send(protocol.InitError(protocol.bounded(FunctionError("Runtime.ExitError", message))))
        for request_id in holding:
            error = protocol.bounded(FunctionError("Runtime.ExitError", message))
            self.conn.send(Result(request_id, error=error, max_rss_kb=max_rss_kb(fresh=True), fatal=True))
        # Answers another thread is sending right now go out before the instance ends.
        deadline = time.monotonic() + CLAIM_WAIT
        while time.monotonic() < deadline:
            with self.lock:
                if not self.claimed:
                    break
            time.sleep(0.005)
        os._exit(0)

    def receive_invocations(
        self, take: Callable[[protocol.Invoke], None], then: Callable[[], None] | None = None
    ) -> None:
        """Hand every Invoke from the daemon to `take` (see `receive_invocation`), then call `then`
        without the lock, until a Shutdown (or anything else) ends the instance's work."""
        while self.receive_invocation(take):
            if then is not None:
                then()

    def receive_invocation(self, take: Callable[[protocol.Invoke], None]) -> bool:
        """Hand the next Invoke from the daemon to `take`, with the lock held and the credentials
        it carries stored; False when a Shutdown (or anything else) ends the instance's work.
        One thread at a time reads the daemon's socket."""
        frame = self.conn.receive()
        if not isinstance(frame, protocol.Invoke):
            return False
        with self.lock:
            if frame.credentials is not None:
                self.credentials = dict(frame.credentials)
            take(frame)
        return True

    def holding(self) -> list[str]:
        """Every request the instance was given and has not answered (under the lock)."""
        return [request_id for request_id in self.active if request_id not in self.claimed]

    def claim(self, request_id: str) -> bool:
        """Take the right to answer `request_id` (under the lock); False once the bootstrap's exit
        answers everything the instance holds."""
        if self.dead:
            return False
        self.claimed.add(request_id)
        return True

    def done(self, request_id: str) -> None:
        with self.lock:
            self.claimed.discard(request_id)
            if request_id in self.active:
                self.active.remove(request_id)

    def became_ready(self) -> None:
        with self.lock:
            if self.ready or self.dead:
                return
            self.ready = True
        self.conn.send(protocol.Ready((time.monotonic() - self.started) * 1000))

    def init_deadline(self) -> float:
        timeout = float(self.spec.initializer_timeout or 3)
        return self.started + max(timeout - INIT_MARGIN, timeout * 0.9)

    def watch_init(self, what: str) -> None:
        """Report a start that does not finish in time, with the bootstrap's output (a thread)."""
        time.sleep(max(0.0, self.init_deadline() - time.monotonic()))
        with self.lock:
            if self.ready or self.dead:
                return
            self.dead = True
        self.output.drain()
        message = f"bootstrap did not {what} within {self.spec.initializer_timeout} s (initializer_timeout)"
        tail = self.output.tail()
        if tail:
            message += f"; its last output:\n{tail}"
        self.conn.send(protocol.InitError(protocol.bounded(FunctionError("Runtime.InitError", message))))
        os._exit(0)

    def answer(
        self,
        request_id: str,
        body: bytes | None = None,
        error: FunctionError | None = None,
        http: tuple[int, list[tuple[str, str]]] = (0, []),
    ) -> None:
        """Send a request's Result, after the output it printed before answering."""
        self.output.drain()
        status, headers = http
        self.conn.send(
            Result(
                request_id,
                body=body,
                error=error,
                max_rss_kb=max_rss_kb(),
                http_status=status,
                http_headers=headers,
            )
        )


_rss = [0.0, 0]


def max_rss_kb(fresh: bool = False) -> int:
    # The bootstrap's own peak once reaped; the daemon prefers the cgroup's figure anyway. Looked
    # up at most every RSS_EVERY seconds: two system calls per answer showed at the CPU quota.
    now = time.monotonic()
    if fresh or now - _rss[0] >= RSS_EVERY:
        _rss[:] = [
            now,
            max(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            ),
        ]
    return int(_rss[1])


def listening_socket() -> socket.socket:
    """The runtime API's socket on the loopback of the instance's own network namespace."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Port 0: each sandbox has its own loopback, but a node without network namespaces
    # (degraded mode) shares one, where a fixed port would collide.
    listener.bind(("127.0.0.1", 0))
    # Room for a burst of connects while the agent's loop is behind (it shares the instance's CPU
    # quota with the bootstrap): a full queue drops SYNs, which the client repeats after 1 s.
    listener.listen(LISTEN_BACKLOG)
    return listener


def serve(conn, sock: socket.socket, spec: Specialize, seccomp_programs: dict[str, bytes]) -> NoReturn:
    """Entry point after `Specialize` with mode "custom" or "http"; never returns."""
    # Imported here: the Python instance module imports this one lazily.
    from runtimes.python.instance import mounted, open_trees

    listener = listening_socket() if spec.mode == "custom" else None
    trees: list[int] = []
    if spec.sandbox is not None:
        try:
            trees = [] if mounted(spec) else open_trees(spec)
            keep = {sock.fileno(), *trees}
            if listener is not None:
                keep.add(listener.fileno())
            enter(spec.sandbox, keep, seccomp_programs.get(spec.sandbox.seccomp_profile))
        except (ContainmentFailed, OSError) as exc:
            conn.send(protocol.InitError(FunctionError("Runtime.InitError", f"sandbox: {exc}")))
            os._exit(71)
    # Without mounts the code stays at its host path, reached through the descriptor opened above.
    code_dir = f"/proc/self/fd/{trees[0]}" if trees else spec.code_dir
    environ = dict(spec.environ)
    if spec.mode == "custom":
        from runtimes.custom.runtime_api import RuntimeApi

        agent: Agent = RuntimeApi(conn, spec, code_dir, listener)
    else:
        from runtimes.custom.http import HttpAgent

        agent = HttpAgent(conn, spec, code_dir)
    problem = agent.check_bootstrap()
    if problem is not None:
        conn.send(protocol.InitError(FunctionError("Runtime.InitError", problem)))
        os._exit(0)
    try:
        agent.run(environ)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.ENOENT):
            message = f"bootstrap cannot be started: {exc.strerror} (is it a program or a script with a #! line?)"
        else:
            message = f"bootstrap cannot be started: {exc}"
        conn.send(protocol.InitError(FunctionError("Runtime.InitError", message)))
        os._exit(0)
    os._exit(0)
