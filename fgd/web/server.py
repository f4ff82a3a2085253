"""The HTTP listeners: fgd's own HTTP/1.1 server on trio and h11, with its accept loop and limits.

Both listeners (the API and the gateway) run `serve_http`; each connection is served by
fgd.web.connection (h11 parses and frames; the ASGI app runs in the connection's task). It
replaced hypercorn (issue 15): hypercorn's per-request work (a task and a queue per request,
events passed between them, its own wrappers) was most of the daemon's CPU on the invoke path.
The apps see plain ASGI (http scope, receive, send; lifespan for the Quart app), so front.py,
gateway.py and the management API run on it unchanged. HTTP/1.1 only: no upgrade to HTTP/2
(its flow control is outside send_timeout) or WebSocket; `Upgrade` is ignored and an HTTP/2
preface is a request like any other (400, its target `*` being for OPTIONS only, and close).

Per connection:
- the head of a request (request line and headers) must arrive within `header_timeout` of
  the connection opening, or of its first byte on a kept-alive connection; an idle
  kept-alive connection lives `keep_alive_timeout`;
- each pause in a request body may last `body_timeout`;
- a response the client does not read for `send_timeout` ends the connection;
- an exception anywhere in one connection is logged and closes that connection only.

Per listener: at most `max_connections` at once (briefly up to 1/8 more while evicted ones
close). A new connection past the cap evicts one that is waiting on its client: an idle
kept-alive connection first, else the one that has waited longest for a request head or the
next piece of a body, else the one whose client has left its answer unread longest. A
client that sends its request at once (a health check, an SDK) and reads its answer is
never that one, so it gets in however many slow clients hold connections; only if every
connection is busy inside the daemon (functions running) does a new client wait.

On shutdown the listener stops accepting, closes idle connections and those waiting for a
head, answers 408 to those waiting for a body, and lets the others finish their current
request (with `Connection: close`) within `graceful_timeout`; an answer being sent goes on
while its client reads it, and is dropped once the client has taken nothing for 1 s.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fgd.config import ListenerConfig
from fgd.web.connection import Connection, Slots

log = logging.getLogger("fgd.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# Errors of accept(2) that mean "out of descriptors or memory for now": wait and retry.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Errors of accept(2) about the one connection (gone before it was accepted ...): skip it.
_ACCEPT_IGNORABLE_ERRNOS = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.ENETDOWN,
    errno.ENOPROTOOPT,
    errno.EHOSTDOWN,
    errno.ENONET,
    errno.EHOSTUNREACH,
    errno.EOPNOTSUPP,
    errno.ENETUNREACH,
}
# Linux's value; Python names it from 3.13 on.
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# Descriptors the daemon keeps for itself (store, instances, zygotes, packages) out of its limit.
FD_RESERVE = 1024

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than horizontal tab: never allowed in a header value.
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


async def lifespan(receive: Callable, send: Callable) -> None:
    """Answer an ASGI lifespan scope for an app with nothing to start or stop."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def header_problem(name: bytes, value: bytes) -> str | None:
    """Why this response header cannot be sent, or None."""
    if not TOKEN.fullmatch(name):
        return f"header name {name[:100]!r} is not an HTTP token"
    if CONTROL.search(value):
        return f"the value of header {name.decode('latin-1')!r} contains a control character"
    return None


def header_text(text: str) -> bytes:
    """`text` as a header value: printable ASCII kept, anything else (CR, LF, NUL, non-ASCII) as '?'."""
    return text.encode("ascii", "replace").translate(_PRINTABLE)


_PRINTABLE = bytes(c if 0x20 <= c < 0x7F else ord("?") for c in range(256))


# -- lifespan ---------------------------------------------------------------------------------


class Lifespan:
    """The ASGI lifespan protocol for one app: startup before serving, shutdown after."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app, self._from_server = trio.open_memory_channel[dict](2)
        self._started = trio.Event()
        self._stopped = trio.Event()
        self.failure: str | None = None

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self._from_server.receive, self._send)
        except Exception:
            # An app without lifespan support may raise on the scope: it then needs none.
            if not self._started.is_set():
                log.debug("the app does not support ASGI lifespan", exc_info=True)
            else:
                log.exception("the app's lifespan failed")
        finally:
            self._started.set()
            self._stopped.set()

    async def _send(self, message: dict) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            self.failure = message.get("message", "") or kind
        if kind.startswith("lifespan.startup."):
            self._started.set()
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set()

    async def startup(self) -> None:
        await self._to_app.send({"type": "lifespan.startup"})
        await self._started.wait()
        if self.failure is not None:
            raise RuntimeError(f"the app failed to start: {self.failure}")

    async def shutdown(self, timeout: float) -> None:
        if self._stopped.is_set():
            return
        await self._to_app.send({"type": "lifespan.shutdown"})
        with trio.move_on_after(timeout):
            await self._stopped.wait()


# -- the listener ------------------------------------------------------------------------------


async def serve_http(
    app: ASGIApp,
    sock: socket.socket,
    limits: ListenerConfig,
    *,
    graceful_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the listening socket `sock` until `shutdown_trigger` returns.

    Then stop accepting, close idle connections, and give busy ones `graceful_timeout`.
    """
    slots = Slots(limits.max_connections)
    sock.setblocking(False)
    address = sock.getsockname()
    host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    bind = f"http://{host}:{address[1]}"
    server = (address[0], address[1])

    async def handle(client: socket.socket) -> None:
        try:
            await Connection(trio.socket.from_stdlib_socket(client), app, limits, slots, server).run()
        except Exception:
            # One connection's failure (a bug of ours, a surprise from h11) ends that
            # connection, never the listener.
            log.exception("connection to %s failed", bind)
        finally:
            slots.release()
            client.close()

    async def accept(connections: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            # Take every pending connection in one go (a trio accept would let every runnable task
            # run between two connections, which under a flood slows accepting to a crawl).
            for _ in range(64):
                try:
                    client, _ = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                        log.error("%s: accept failed (%s); retrying in 0.1 s", bind, exc.strerror)
                        await trio.sleep(0.1)
                        break
                    if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
                        continue
                    raise
                client.setblocking(False)
                if client.family != socket.AF_UNIX:
                    # Answers are written whole, in one send: no reason to hold a segment back.
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # The kernel keeps at most this much of an answer the client has not taken
                    # (as trio's streams set it); the rest waits in the daemon, where
                    # send_timeout and max_body_memory count it.
                    client.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, 16384)
                # A slot for a client that is really there: at the cap, one waiting connection
                # is evicted; if every connection is busy in the daemon, this one waits.
                try:
                    while not slots.take():
                        await slots.released()
                except BaseException:
                    client.close()
                    raise
                connections.start_soon(handle, client)

    lifespan = Lifespan(app)
    async with trio.open_nursery() as lifespan_nursery:
        lifespan_nursery.start_soon(lifespan.run)
        await lifespan.startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(accept, connections)
                task_status.started([bind])
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            sock.close()
            # Whoever waits on a client goes now: idle and half-sent heads close, stalled bodies
            # get a 408, so a slow client cannot hold shutdown for shutdown_grace. Busy ones
            # answer their request with `Connection: close`.
            slots.closing = True
            for waiter in [*slots.idle, *slots.waiting]:
                waiter.evict()
            # An answer on its way goes on while its client takes it, not while it takes nothing.
            for writer in [*slots.writing]:
                writer.hurry()
            connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
        await lifespan.shutdown(graceful_timeout)
        lifespan_nursery.cancel_scope.cancel()


def connection_caps(wanted: list[int]) -> list[int]:
    """Each listener's connection cap, within what the daemon's open-file limit allows.

    The soft limit is raised to the hard one first (the systemd unit sets 1048576); the
    daemon keeps FD_RESERVE descriptors for itself and the rest is shared by the listeners.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sum(wanted) + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    share = max(1, (soft - FD_RESERVE) // max(1, len(wanted)))
    caps = [min(w, share) for w in wanted]
    log.info("the open-file limit (%d) caps connections per listener at %s (configured: %s)", soft, caps, wanted)
    return caps
