"""The instance loop: specialise once, then serve invocations over the socket.

Runs in a process forked from the zygote. Blocking I/O on purpose: one request
at a time for now, so the simplest loop is also the fastest one.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import linecache
import os
import posix
import resource
import select
import socket
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import msgspec
import prctl

from runtimes import protocol

# Issue 13 (nodejs): imported now, while fgd's source is visible (the sandbox does not show it).
from runtimes.nodejs import keeper
from runtimes.protocol import Contain, FunctionError, Invoke, Result, Shutdown, Specialize
from runtimes.python import context
from runtimes.python.concurrency import serve_concurrently
from runtimes.python.context import Context
from sandbox import reaper
from sandbox.contain import ContainmentFailed, contain, enter, prepare
from sandbox.policy import ContainPolicy

MAX_RESPONSE = protocol.MAX_RESPONSE
# Resolved while the host filesystem is still visible (the sandbox has no venv symlinks).
REAL_EXECUTABLE = os.path.realpath(sys.executable)
# Frames a function's error traces leave out, with the host paths in them (issue 12): fgd's own
# files (this shim, the protocol, the sandbox library, their packages), and the interpreter's
# library (importlib's import_module, the stdlib modules a call went through). What is left is
# the function's code and dependencies, at the paths it sees them (/opt/function/code/...).
OWN_DIRS = tuple(
    sorted(
        {
            os.path.join(real(directory), "")
            for directory in (
                os.path.dirname(os.path.abspath(sys.modules["runtimes"].__file__ or "")),
                os.path.dirname(os.path.abspath(sys.modules["sandbox"].__file__ or "")),
                *(os.path.dirname(os.path.abspath(path)) for path in (msgspec.__file__, prctl.__file__)),
                *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
                *(
                    sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})[key]
                    for prefix in (sys.base_prefix, sys.prefix)
                    for key in ("stdlib", "platstdlib")
                ),
            )
            for real in (os.path.abspath, os.path.realpath)
        }
    )
)


class Connection:
    """Blocking framed connection to the daemon; send is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = protocol.FrameBuffer()
        self._pending: list[protocol.Frame] = []
        self._send_lock = threading.Lock()

    def send(self, frame: protocol.Frame) -> None:
        data = protocol.encode(frame)
        with self._send_lock:
            self._sock.sendall(data)

    def waiting(self, timeout: float) -> bool:
        """Whether a frame (or the end) comes within `timeout` seconds."""
        return bool(self._pending) or bool(select.select([self._sock], [], [], timeout)[0])

    def receive(self) -> protocol.Frame:
        while not self._pending:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                # The daemon closed our socket: nobody is left to serve.
                os._exit(0)
            self._pending.extend(self._buffer.feed(chunk))
        return self._pending.pop(0)


class LoadError(Exception):
    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(message)
        self.error = protocol.bounded(FunctionError(error_type, message, stack or []))


def _foreign(filename: str) -> bool:
    """A frame the function did not write: fgd's shim, the interpreter's library, the import machinery."""
    return filename.startswith(OWN_DIRS) or filename.startswith("<frozen ")


def _user_frames(summary: traceback.StackSummary) -> traceback.StackSummary:
    return traceback.StackSummary.from_list([frame for frame in summary if not _foreign(frame.filename)])


def error_from_exception(exc: BaseException) -> FunctionError:
    # The trace starts in user code: the runtime's own frames are not the function's.
    frames = list(_user_frames(traceback.extract_tb(exc.__traceback__)))[-protocol.MAX_STACK_LINES :]
    stack = traceback.StackSummary.from_list(frames).format()
    try:
        message = str(exc)
    except Exception as failure:  # noqa: BLE001 - a user exception's __str__ may fail too
        message = f"<the exception's message could not be read: {type(failure).__name__}>"
    # Bounded so the report always fits in a frame; the daemon cuts again on its side.
    return protocol.bounded(FunctionError(type(exc).__name__, message, [line.rstrip("\n") for line in stack]))


def resolve(code_dir: str, handler: str, role: str) -> Callable[..., Any]:
    """Import `dir/file.func` from the code directory and return `func`."""
    module_path, _, func_name = handler.rpartition(".")
    if not module_path or not func_name:
        raise LoadError("Runtime.HandlerNotFound", f"{role} {handler!r} is not of the form file.function")
    module_name = module_path.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            message = f"no module {module_name!r} in {code_dir} for {role} {handler!r}"
        else:
            message = f"{module_name}: {exc}"
        raise LoadError("Runtime.ImportModuleError", message, _trace(exc)) from None
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything on import
        raise LoadError(
            "Runtime.ImportModuleError", f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", _trace(exc)
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise LoadError(
            "Runtime.HandlerNotFound", f"{module_name}.py has no function {func_name!r} ({role} {handler!r})"
        )
    return func


def _trace(exc: BaseException) -> list[str]:
    """The whole trace (chained exceptions too), without fgd's own frames."""
    summary = traceback.TracebackException.from_exception(exc)
    seen = set()
    pending = [summary]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = _user_frames(current.stack)
        pending += [c for c in (current.__cause__, current.__context__) if c is not None]
        pending += list(getattr(current, "exceptions", None) or [])
    return [line.rstrip("\n") for line in summary.format()]


def mounted(spec: Specialize) -> bool:
    """Whether the code and dependencies are mounted at their sandbox paths."""
    policy = spec.sandbox
    return policy is not None and policy.protections.mounts and policy.protections.namespaces


def bundled_tree(spec: Specialize) -> str:
    """This interpreter's tree of FunctionGraph's bundled libraries, "" if there is none
    (switched off, or not built for this interpreter)."""
    if not spec.bundled_dir:
        return ""
    tree = f"{spec.bundled_dir}/python{sys.version_info[0]}.{sys.version_info[1]}"
    return tree if os.path.isdir(tree) else ""


def open_trees(spec: Specialize) -> list[int]:
    """Without mounts, the code and dependency trees stay at their host paths, inside the
    daemon's state dir, which the function's uid may not traverse: open them while still
    root; the function reaches them as /proc/self/fd/N. The bundled libraries' tree, if
    any, comes last."""
    paths = [spec.code_dir, *spec.dependency_dirs]
    bundled = bundled_tree(spec)
    if bundled:
        paths.append(bundled)
    return [os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for path in paths]


def apply_environment(spec: Specialize, trees: list[int]) -> None:
    # The function's environment and nothing else: not the zygote's, not the daemon's.
    os.environ.clear()
    posix.environ.clear()
    os.environ.update(spec.environ)
    # The interpreter's own idea of how it was started names host paths (the venv, this shim).
    sys.argv[:] = [""]
    if hasattr(sys, "orig_argv"):  # Python 3.10+
        sys.orig_argv[:] = [os.path.basename(REAL_EXECUTABLE)]
    sys.prefix, sys.exec_prefix = sys.base_prefix, sys.base_exec_prefix
    sys.executable = REAL_EXECUTABLE
    stdlib = [p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p]
    # FunctionGraph's bundled libraries come after everything the function brings (its own
    # `requests` wins) and after the stdlib, where site-packages would be.
    if mounted(spec):
        # Inside the sandbox only the interpreter's own library is mounted, not the
        # daemon's environment: the import path is the code, its dependencies, the stdlib.
        bundled = bundled_tree(spec)
        sys.path[:] = [spec.code_dir, *spec.dependency_dirs, *stdlib] + ([bundled] if bundled else [])
    elif trees:
        os.fchdir(trees[0])
        paths = [f"/proc/self/fd/{fd}" for fd in trees]
        own = 1 + len(spec.dependency_dirs)
        sys.path[:] = paths[:own] + stdlib + paths[own:]
    else:
        bundled = bundled_tree(spec)
        os.chdir(os.path.dirname(spec.code_dir.rstrip("/")) or "/")
        sys.path[:0] = [spec.code_dir, *spec.dependency_dirs]
        if bundled:
            sys.path.append(bundled)
    forget_other_paths(sys.path)
    importlib.invalidate_caches()


def forget_other_paths(keep: list[str]) -> None:
    """Drop cached finders and source lines of directories outside `keep` (and outside what lies
    under them): those of the daemon's tree (the venv, runtimes/) name host paths a function has
    no business seeing. The zygote drops them once before it forks (freed in each worker instead,
    they cost ~0.3 ms and 150 KiB of copied pages); a worker checks again when specialised."""
    roots = tuple(p.rstrip("/") + "/" for p in keep if p)
    for path in [p for p in sys.path_importer_cache if p not in keep and not p.startswith(roots)]:
        del sys.path_importer_cache[path]
    if linecache.cache:
        linecache.clearcache()


def encode_result(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return json.dumps(value).encode()


class LoadedFunction:
    """The function as this process runs it: its handler, identity and credentials (the daemon's
    view of the same process is fgd.instance.Instance)."""

    def __init__(self, conn: Connection, spec: Specialize, handler: Callable[..., Any]) -> None:
        self._conn = conn
        self._spec = spec
        self._handler = handler
        # The agency's credentials; an Invoke frame brings new ones when they were renewed.
        self.credentials = dict(spec.identity.credentials)
        # Requests (and the initializer) running now. A task or thread a request left behind keeps
        # its id (its context, its logger) after the request was answered: its output then goes
        # to the pipes untagged, where the daemon treats it as any late output. A Log frame for an
        # id the daemon forgot (it remembers 256 finished requests) would be a protocol breach
        # that drops the instance and the requests it is serving.
        self.running: set[str] = set()

    def context(self, frame: Invoke) -> Context:
        if frame.credentials is not None:
            self.credentials = dict(frame.credentials)
        return Context(self._spec.identity, frame.request_id, frame.deadline, self.emit_log, self.credentials)

    def emit_log(self, request_id: str, level: str, message: str) -> None:
        if request_id in self.running:
            self._conn.send(protocol.log_line(request_id, level, message))
        else:
            late_line(f"[{level}] {message}")

    def invoke(self, frame: Invoke) -> Result:
        self.running.add(frame.request_id)
        try:
            return self._invoke(frame)
        finally:
            self.running.discard(frame.request_id)

    def _invoke(self, frame: Invoke) -> Result:
        context = self.context(frame)
        try:
            event = json.loads(frame.event) if frame.event else {}
            value = self._handler(event, context)
        except Exception as exc:  # noqa: BLE001 - the function's failure is reported, not raised
            return Result(frame.request_id, error=error_from_exception(exc), max_rss_kb=_max_rss_kb())
        return self.result(frame, value)

    async def invoke_async(self, frame: Invoke) -> Result:
        """The same for an `async def handler`, on the instance's event loop."""
        self.running.add(frame.request_id)
        try:
            context = self.context(frame)
            try:
                event = json.loads(frame.event) if frame.event else {}
                value = await self._handler(event, context)
            except Exception as exc:  # noqa: BLE001
                return Result(frame.request_id, error=error_from_exception(exc), max_rss_kb=_max_rss_kb())
            return self.result(frame, value)
        finally:
            self.running.discard(frame.request_id)

    def result(self, frame: Invoke, value: Any) -> Result:
        try:
            body = encode_result(value)
        except (TypeError, ValueError) as exc:
            error = FunctionError("Runtime.InvalidResponse", f"the handler returned a value that is not JSON: {exc}")
            return Result(frame.request_id, error=error, max_rss_kb=_max_rss_kb())
        if len(body) > MAX_RESPONSE:
            error = FunctionError(
                "Runtime.ResponseTooLarge",
                f"the response is {len(body)} bytes; the limit is {MAX_RESPONSE}",
            )
            return Result(frame.request_id, error=error, max_rss_kb=_max_rss_kb())
        return Result(frame.request_id, body=body, max_rss_kb=_max_rss_kb())


def late_line(text: str) -> None:
    """A line of output that belongs to no running request, to the instance's stdout pipe (the
    daemon keeps it as output printed outside any request)."""
    try:
        sys.__stdout__.write(text + "\n")  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):
        pass  # the function closed its stdout: the line is lost, the request it came from is over


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    """Record the ms since `since` as step `name`; the time now, for the next step."""
    now = time.monotonic()
    timings[name] = round((now - since) * 1000, 3)
    return now


def run_initializer(spec: Specialize, instance: LoadedFunction) -> None:
    init = resolve(spec.code_dir, spec.initializer, "initializer")
    deadline = time.time() + spec.initializer_timeout
    request_id = spec.initializer_request_id or "initializer"
    context = Context(spec.identity, request_id, deadline, instance.emit_log, instance.credentials)
    instance.running.add(request_id)
    try:
        init(context)
    except Exception as exc:  # noqa: BLE001
        error = error_from_exception(exc)
        raise LoadError(
            "Runtime.InitError",
            f"initializer {spec.initializer!r} failed: {error.error_type}: {exc}",
            error.stack_trace,
        ) from None
    finally:
        instance.running.discard(request_id)


class _NoConnection:
    """Where `warm_up`'s rehearsal sends nothing."""

    def send(self, frame: protocol.Frame) -> None:
        pass


# A function's first invocation in a fresh worker wrote to hundreds of pages it shares with
# the zygote (each object a code path touches gets its reference count changed: a copy-on-write
# fault, about 1 us each) and filled lazily built state. Rehearsed in the pooled worker
# instead (issue 15), with a function of no consequence, and every trace of it undone.
WARM_UP_AFTER = 0.005
WARM_DIR = "/tmp/.fgd-warm-up"
WARM_SOURCE = "def handler(event, context):\n    return {}\n"


def warm_up(own_tmp: bool) -> Iterator[None]:
    """Rehearse, in a pooled worker before it is handed out, the code paths of specialisation
    and of a first invocation that do not depend on the function: decoding a Specialize frame,
    emptying the environment, importing a module from source (only with `own_tmp`, the
    sandbox's own /tmp), an invocation through `LoadedFunction`, encoding its Result and a
    Ready. Nothing of it is left: the environment is empty as it was, the logger's level is
    unset again (the function's own user data sets it). A failure only loses the head start.

    A generator: it pauses between parts, where the caller may stop it (`close`) when a frame
    has come (a worker handed out mid-rehearsal waits for one part at most)."""
    try:
        identity = protocol.FunctionIdentity("", "", "", "", "", 128, 100, 3)
        spec = Specialize("/", "warm.handler", "", 3, {"FGD_WARM": "1"}, identity, sandbox=None)
        spec = protocol.FrameBuffer().feed(protocol.encode(spec))[0]
        assert isinstance(spec, Specialize)
        os.environ.clear()
        posix.environ.clear()
        os.environ.update(spec.environ)
        os.environ.clear()
        importlib.invalidate_caches()
        yield
        handler = _warm_import() if own_tmp else (lambda event, context: {})
        yield
        instance = LoadedFunction(_NoConnection(), spec, handler)  # type: ignore[arg-type]
        frame = protocol.FrameBuffer().feed(protocol.encode(Invoke("warm-up", b"{}", time.time() + 1)))[0]
        assert isinstance(frame, Invoke)
        protocol.encode(instance.invoke(frame))
        protocol.encode(protocol.Ready(0.0, {"enter_sandbox": 0.0}))
    except Exception:  # noqa: BLE001 - an optimisation: the real specialisation does it all again
        pass
    finally:
        os.environ.clear()
        context.reset_logger_level()


def prepare_in_pool(conn: Connection, policy: ContainPolicy, seccomp_programs: dict[str, bytes]) -> None:
    """Step 5 of containment (`sandbox.contain.prepare`) and the rehearsal (`warm_up`), part by
    part, as long as no frame comes: a worker handed out meanwhile is specialised at once."""
    prepare(policy, seccomp_programs.values())
    rehearsal = warm_up(own_tmp=policy.protections.mounts)
    try:
        while not conn.waiting(0):
            next(rehearsal)
    except StopIteration:
        pass
    finally:
        rehearsal.close()


def _warm_import() -> Callable[..., Any]:
    """Import a module from source as `resolve` will import the function's, from a directory on
    the sandbox's own /tmp (the only writable place; nothing else runs in the sandbox yet) that
    is gone again afterwards, with every cache entry of it. Plain system calls, not tempfile or
    shutil: what the rehearsal touches beyond the real import stays private to every instance."""
    directory = WARM_DIR
    name = "fgd_warm_up"
    source = f"{directory}/{name}.py"
    os.mkdir(directory, 0o700)
    write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    sys.path.insert(0, directory)
    try:
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, WARM_SOURCE.encode())
        finally:
            os.close(fd)
        return resolve(directory, f"{name}.handler", "handler")
    finally:
        sys.path.remove(directory)
        sys.path_importer_cache.pop(directory, None)
        module = sys.modules.pop(name, None)
        if module is not None:
            # The module's dict and its function refer to each other: a cycle only the cyclic GC
            # would free, so the function's first invocation could still find the rehearsal's
            # handler in gc.get_objects() (the attacker pass found it). Emptied, the module and
            # its function go with the rehearsal's last reference (the handler needs no globals).
            module.__dict__.clear()
        sys.dont_write_bytecode = write_bytecode
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)
        os.rmdir(directory)


def serve(sock: socket.socket, seccomp_programs: dict[str, bytes]) -> NoReturn:
    """Entry point of a freshly forked instance; never returns."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)
    conn = Connection(sock)
    spec = conn.receive()
    if isinstance(spec, Contain):
        try:
            contain(spec.policy)
        except ContainmentFailed as exc:
            conn.send(protocol.ContainError(str(exc)))
            os._exit(71)
        # From here on we are the worker inside the sandbox.
        conn.send(protocol.Contained())
        if not conn.waiting(WARM_UP_AFTER):
            # Waiting in the pool: prepare and rehearse now. (A start with the pool empty sends
            # its Specialize, and a Node.js pool member its Launch, at once: they would only wait.)
            prepare_in_pool(conn, spec.policy, seccomp_programs)
        spec = conn.receive()
    else:
        # Not contained at all: no PID 1 of ours will exec the zygote's descriptor of fgd-pid1.
        reaper.forget_native()
    if isinstance(spec, protocol.Launch):
        # Issue 13 (nodejs): this worker starts the language's own process and keeps it.
        keeper.launch(sock, spec, seccomp_programs)
    if not isinstance(spec, Specialize):
        os._exit(2)
    if spec.mode != "python":
        # Issue 13: a Custom or http function; the agent applies `enter` itself (it opens the
        # runtime API's socket first) and starts `bootstrap` (runtimes/custom/agent.py).
        from runtimes.custom import agent

        agent.serve(conn, sock, spec, seccomp_programs)
    started = time.monotonic()
    # Each step of specialisation, in ms (issue 15: bench/cold_start.py prints them).
    timings: dict[str, float] = {}
    step = started
    trees: list[int] = []
    if spec.sandbox is not None:
        try:
            trees = [] if mounted(spec) else open_trees(spec)
            keep = {sock.fileno(), *trees}
            enter(spec.sandbox, keep, seccomp_programs.get(spec.sandbox.seccomp_profile))
        except (ContainmentFailed, OSError) as exc:
            conn.send(protocol.InitError(FunctionError("Runtime.InitError", f"sandbox: {exc}")))
            os._exit(71)
        step = _lap(timings, "enter_sandbox", step)
    apply_environment(spec, trees)
    step = _lap(timings, "environment", step)
    try:
        handler = resolve(spec.code_dir, spec.handler, "handler")
        instance = LoadedFunction(conn, spec, handler)
        step = _lap(timings, "load_handler", step)
        if spec.initializer:
            run_initializer(spec, instance)
            _lap(timings, "initializer", step)
    except LoadError as exc:
        conn.send(protocol.InitError(exc.error))
        os._exit(0)
    conn.send(protocol.Ready((time.monotonic() - started) * 1000, timings))
    if spec.concurrency > 1 or inspect.iscoroutinefunction(handler):
        serve_concurrently(conn, instance, spec.concurrency, inspect.iscoroutinefunction(handler))
    while True:
        frame = conn.receive()
        if isinstance(frame, Invoke):
            conn.send(instance.invoke(frame))
        elif isinstance(frame, Shutdown):
            os._exit(0)
        else:
            os._exit(2)
