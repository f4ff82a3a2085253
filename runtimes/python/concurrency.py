"""Serving several requests at once in one instance (FunctionGraph's `concurrent_num`).

Sync handlers run on a pool of `concurrent_num` threads, `async def` handlers
on one event loop; module globals are shared, as on FunctionGraph. The main
thread keeps reading frames. `print` and anything written to sys.stdout or
sys.stderr from a request's thread or task is sent as a log line carrying
that request's id, so concurrent requests' logs never mix; output written
straight to the descriptors (a subprocess's) still goes through the pipes, and
so does output of a task or thread a request left running after it was
answered (untagged: the daemon keeps it as late output).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

from runtimes import protocol
from runtimes.protocol import Invoke, Shutdown

if TYPE_CHECKING:
    from runtimes.python.instance import Connection, LoadedFunction

current_request: contextvars.ContextVar[str] = contextvars.ContextVar("current_request", default="")


class RequestStream(io.TextIOBase):
    """sys.stdout / sys.stderr: lines of a request go to the daemon tagged with its id."""

    def __init__(self, name: str, fallback: io.TextIOBase, conn: Connection, running: set[str]) -> None:
        self._name = name
        self._fallback = fallback
        self._conn = conn
        # The requests running now (LoadedFunction.running): a finished one's id is no longer tagged.
        self._running = running
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        request_id = current_request.get()
        if not request_id or request_id not in self._running:
            return self._fallback.write(text)
        with self._lock:
            pending = self._partial.pop(request_id, "") + text
            *lines, rest = pending.split("\n")
            if len(rest) > protocol.MAX_LOG_LINE:
                lines.append(rest)  # a line without end: sent (and cut) now rather than kept growing
            elif rest:
                self._partial[request_id] = rest
        for line in lines:
            self._conn.send(protocol.log_line(request_id, self._name, line))
        return len(text)

    def finish(self, request_id: str) -> None:
        with self._lock:
            rest = self._partial.pop(request_id, "")
        if rest:
            self._conn.send(protocol.log_line(request_id, self._name, rest))

    def flush(self) -> None:
        self._fallback.flush()

    def fileno(self) -> int:
        return self._fallback.fileno()


def serve_concurrently(conn: Connection, instance: LoadedFunction, slots: int, is_async: bool) -> NoReturn:
    streams = [
        RequestStream("stdout", sys.stdout, conn, instance.running),
        RequestStream("stderr", sys.stderr, conn, instance.running),
    ]
    sys.stdout, sys.stderr = streams  # type: ignore[assignment]

    def done(request_id: str, result: protocol.Result) -> None:
        for stream in streams:
            stream.finish(request_id)
        conn.send(result)

    if is_async:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="handler-loop", daemon=True).start()

        async def run_async(frame: Invoke) -> None:
            current_request.set(frame.request_id)
            try:
                done(frame.request_id, await instance.invoke_async(frame))
            except BaseException:  # noqa: BLE001 - as for threads: unanswered, the request would wait for its timeout
                os._exit(70)

        def submit(frame: Invoke) -> None:
            asyncio.run_coroutine_threadsafe(run_async(frame), loop)
    else:
        pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="handler")

        def run_sync(frame: Invoke) -> None:
            current_request.set(frame.request_id)
            try:
                done(frame.request_id, instance.invoke(frame))
            except BaseException:  # noqa: BLE001 - a thread must not die silently: take the instance down
                os._exit(70)

        def submit(frame: Invoke) -> None:
            pool.submit(contextvars.copy_context().run, run_sync, frame)

    while True:
        frame = conn.receive()
        if isinstance(frame, Invoke):
            submit(frame)
        elif isinstance(frame, Shutdown):
            os._exit(0)
        else:
            os._exit(2)
