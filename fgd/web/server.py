"""The HTTP listeners: hypercorn's HTTP/1.1 machinery behind our own accept loop and limits.

hypercorn (0.18) gives a listener `keep_alive_timeout` (which also bounds the wait for a
request's head, as one deadline from the connection's start or the previous response),
`read_timeout` (a limit on every read, so it would also cut a client off while its
function runs) and `h11_max_incomplete_size` (the largest request head). It has no cap on
connections, no body or send timeout, and any exception in a connection's bookkeeping ends
the whole server. So `serve_http` replaces hypercorn's `worker_serve` (about as long) and
keeps the rest: the protocol code, lifespan, and `TCPServer` with three small overrides
(`protocol_send`, `_read_data`, `_idle_timeout`: written against hypercorn 0.18's
TCPServer; check them when the pin in pyproject.toml moves).

Per connection:
- the head of a request (request line and headers) must arrive within `header_timeout` of
  the connection opening, or of its first byte on a kept-alive connection; an idle
  kept-alive connection lives `keep_alive_timeout`;
- each pause in a request body may last `body_timeout` (enforced by `guard`, below the
  app, where the ASGI state says whether a body is still expected);
- a response the client does not read for `send_timeout` ends the connection;
- an exception anywhere in one connection is logged and closes that connection only.

Per listener: at most `max_connections` at once (briefly up to 1/8 more while evicted ones
close). A new connection past the cap evicts one that is waiting on its client: an idle
kept-alive connection first, else the one that has waited longest for a request head or the
next piece of a body. A client that sends its request at once (a health check, an SDK) is
never that one, so it gets in however many slow clients hold connections; only if every
connection is busy inside the daemon (functions running) does a new client wait.
"""

from __future__ import annotations

import errno
import logging
import re
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.config
import msgspec
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr

from fgd.config import ListenerConfig
from fgd.errors import ErrorBody
from fgd.web.requestid import with_request_ids

log = logging.getLogger("fgd.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# A body left unread by a response (401, 404, 405, 413 ...) is read and dropped, up to this
# much, so the connection can carry the client's next request; past it the response says
# `Connection: close`.
DRAIN_LIMIT = 8 * 1024 * 1024
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


# -- the ASGI guard: body timeout, draining, response checks ---------------------------------


class _Exchange:
    """One request and its response, between hypercorn and the app."""

    def __init__(self, scope: dict, receive: Callable, send: Callable, limits: ListenerConfig, slots: _Slots) -> None:
        self.scope = scope
        self.slots = slots
        self._receive = receive
        self._send = send
        self.limits = limits
        self.http1 = scope.get("http_version") in ("1.0", "1.1")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        self.declared = int(declared) if declared.isdigit() else None
        self.received = 0
        self.body_done = False
        self.timed_out = False
        self.evicted = False
        self.started = False
        self.replaced = False
        self.drain = True
        # The app (Quart reads the body in a task of its own) and the drain may both want the
        # next message; one reads at a time, and each looks at body_done first.
        self.lock = trio.Lock()
        self.app_scope = trio.CancelScope()
        self._wait: trio.CancelScope | None = None

    async def _pull(self, timeout: float) -> dict | None:
        """The next message, or None if none came within `timeout` (or the listener evicted us)."""
        with trio.move_on_after(timeout) as self._wait:
            self.slots.waiting[self] = None
            try:
                message = await self._receive()
            finally:
                self.slots.waiting.pop(self, None)
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.body_done = True
            self.received += len(message.get("body", b""))
            return message
        return None

    def evict(self) -> None:
        self.evicted = True
        if self._wait is not None:
            self._wait.cancel()

    async def receive(self) -> dict:
        if not self.body_done:
            async with self.lock:
                if not self.body_done:
                    message = await self._pull(self.limits.body_timeout)
                    if message is None:
                        # The body stalled: stop the app (it may be holding part of it) and answer 408.
                        self.timed_out = True
                        self.app_scope.cancel()
                        await trio.lowlevel.checkpoint()
                    return message  # type: ignore[return-value]
        # Body complete: the app waits for http.disconnect, as long as it likes.
        return await self._receive()

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if self.replaced:
            return
        if kind == "http.response.start":
            problem = _response_problem(message)
            if problem is not None:
                log.error("refused to send an invalid response to %s %s: %s", *_request(self.scope), problem)
                self.replaced = True
                await self.error(500, "FSS.0500", "the daemon produced an invalid HTTP response; see its log")
                return
            unread = None if self.declared is None else self.declared - self.received
            if not self.body_done and self.http1 and unread is not None and unread > DRAIN_LIMIT:
                # Too much left to read and drop: tell the client this connection ends here.
                self.drain = False
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            self.started = True
            await self._send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            if not self.body_done and self.http1 and self.drain:
                # Answered before the body was read (a 401, 404 ...). Send the answer now, read the
                # rest of the body, then end the response: hypercorn keeps a connection for the next
                # request only if both sides are done, and otherwise closes it (while the client,
                # told nothing, sends its next request into it and waits).
                if message.get("body"):
                    await self._send({"type": "http.response.body", "body": message["body"], "more_body": True})
                await self._drain()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await self._final(message)
        else:
            await self._send(message)

    async def _drain(self) -> None:
        start = self.received
        while not self.body_done and self.received - start <= DRAIN_LIMIT:
            async with self.lock:
                if self.body_done:
                    return
                if await self._pull(self.limits.body_timeout) is None:
                    return

    async def _final(self, message: dict) -> None:
        # The end of a response is where hypercorn recycles or closes the connection, inside this
        # call. quart-trio cancels its own task as soon as it sees the http.disconnect that this
        # call produces; cut short here, the connection would be left neither recycled (the next
        # request hangs) nor closed. So the call is shielded, with a deadline of its own.
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + self.limits.send_timeout
            await self._send(message)

    async def error(self, status: int, code: str, text: str) -> None:
        body = msgspec.json.encode(ErrorBody(code, text))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if not self.body_done:
            headers.append((b"connection", b"close"))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True
        await self._final({"type": "http.response.body", "body": body})


def _request(scope: dict) -> tuple[str, str]:
    return scope.get("method", "?"), scope.get("path", "?")


def _response_problem(message: dict) -> str | None:
    status = message.get("status")
    if type(status) is not int or not 200 <= status <= 599:
        return f"status {status!r} is not a final HTTP status (200-599)"
    for name, value in message.get("headers", ()):
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            return f"header {name!r}: {value!r} is not bytes"
        problem = header_problem(name, value)
        if problem is not None:
            return problem
    return None


def guard(app: ASGIApp, limits: ListenerConfig, slots: _Slots) -> ASGIApp:
    """`app` with the body timeout, draining of unread bodies and a check of every response start."""

    async def guarded(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, limits, slots)
        with exchange.app_scope:
            await app(scope, exchange.receive, exchange.send)
        if exchange.timed_out and not exchange.started:
            if exchange.evicted and slots.closing:
                message = "the daemon is shutting down; send the request again when it is back"
            elif exchange.evicted:
                message = "the listener is full and this request's body was the slowest to arrive; send it at once"
            else:
                message = f"the request body stalled for more than {limits.body_timeout:g} s; send it at once"
            log.debug("%s %s: %s", *_request(scope), message)
            await exchange.error(408, "FSS.0408", message)

    return guarded


# -- connections -------------------------------------------------------------------------------


class _TimedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose sends give up after `send_timeout` (a client that stopped reading)."""

    def __init__(self, inner: trio.SocketStream, send_timeout: float) -> None:
        self.inner = inner
        self.socket = inner.socket  # hypercorn reads the peer's address from it
        self.send_timeout = send_timeout

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # hypercorn shields its sends from cancellation; this deadline is inside that shield.
        with trio.move_on_after(self.send_timeout):
            await self.inner.send_all(data)
            return
        await trio.aclose_forcefully(self.inner)
        raise trio.BrokenResourceError(f"the client read nothing for {self.send_timeout:g} s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Slots:
    """The connection cap of one listener, and the connections that wait on their clients."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # An evicted connection takes a few scheduler rounds to close; meanwhile up to this many
        # more may be accepted, so a flood is not served one eviction round-trip at a time.
        self.overshoot = max(1, min(limit // 8, 256))
        self.count = 0
        self.closing = False
        self._released = trio.Event()
        # Evicted in this order, oldest first: idle kept-alive connections, then connections
        # waiting for a request head or the next piece of a body (_Connection, _Exchange).
        self.idle: dict[Any, None] = {}
        self.waiting: dict[Any, None] = {}
        self.open: set[_Connection] = set()

    def take(self) -> bool:
        """Count one more connection if the cap allows; at the cap, evict one to make room."""
        if self.count >= self.limit and not (self.count < self.limit + self.overshoot and self._evict_one()):
            return False
        self.count += 1
        return True

    async def released(self) -> None:
        """Until a connection closes, or a moment has passed (one may have started to wait)."""
        with trio.move_on_after(0.05):
            await self._released.wait()

    def release(self) -> None:
        self.count -= 1
        self._released.set()
        self._released = trio.Event()

    def _evict_one(self) -> bool:
        for group in (self.idle, self.waiting):
            for victim in group:
                del group[victim]
                victim.evict()
                return True
        return False


class _Connection(TCPServer):
    """hypercorn's connection, with fgd's head and idle deadlines (see the module's docstring)."""

    slots: _Slots
    limits: ListenerConfig
    _served = False
    _idle_scope: trio.CancelScope | None = None

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated) and not event.idle:
            self._served = True  # a whole request head arrived; later idle spells are keep-alive
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        _http1_only(self.protocol)
        # hypercorn's loop without its read_timeout (which would also cut off a client waiting for
        # a slow function); instead the first byte of a request head starts the head's deadline.
        while True:
            try:
                data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if data:
                self.head_started()
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        # The client is gone: an idle wait would keep its descriptor and slot until the keep-alive
        # timeout (hypercorn waits for it before closing).
        self.evict()
        await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        # Runs while no request is in progress; cancelled by hypercorn when a request head is
        # complete. Between requests keep_alive_timeout, before and within a head header_timeout.
        keep_alive = self._served
        with trio.move_on_after(self.limits.keep_alive_timeout if keep_alive else self.limits.header_timeout) as scope:
            self._idle_scope = scope
            (self.slots.idle if keep_alive else self.slots.waiting)[self] = None
            try:
                if not self.context.terminated.is_set():
                    await trio.sleep_forever()
            finally:
                self.slots.idle.pop(self, None)
                self.slots.waiting.pop(self, None)
                if self._idle_scope is scope:
                    self._idle_scope = None
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    def head_started(self) -> None:
        """The first bytes of a request head arrived: it must be complete within header_timeout."""
        scope = self._idle_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + self.limits.header_timeout)
            if self.slots.idle.pop(self, False) is None:
                self.slots.waiting[self] = None

    def evict(self) -> None:
        """Close now if idle or waiting for a head (the listener is full, or shutting down)."""
        self.slots.idle.pop(self, None)
        self.slots.waiting.pop(self, None)
        if self._idle_scope is not None:
            self._idle_scope.cancel()


async def _no_protocol_switch(event: Any) -> None:
    """Stands in for H11Protocol._check_protocol: never switch to HTTP/2."""


def _http1_only(wrapper: Any) -> None:
    """Keep a connection on HTTP/1.1 (hypercorn 0.18's ProtocolWrapper around an H11Protocol).

    On a cleartext connection hypercorn switches to HTTP/2 on `Upgrade: h2c` or the HTTP/2
    preface. HTTP/2 has its own flow control, which `send_timeout` does not see: a client that
    opens streams with a zero window holds each response in the daemon's memory for as long as
    it likes (20 connections of 10 streams held 1.2 GB, unauthenticated, through the gateway).
    With the check gone such requests are plain HTTP/1.1 ones: `Upgrade: h2c` is ignored and
    the preface's `PRI *` is answered 404, then its remainder 400 and the connection closed.
    """
    inner = getattr(wrapper, "protocol", None)
    if isinstance(inner, H11Protocol):
        inner._check_protocol = _no_protocol_switch  # type: ignore[method-assign]


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
    config = hypercorn.config.Config()
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = limits.keep_alive_timeout
    slots = _Slots(limits.max_connections)
    # Outside the guard, so its own answers (408, 500) get an X-Request-Id too.
    wrapped = ASGIWrapper(with_request_ids(guard(app, limits, slots)))
    context = WorkerContext(None)
    lifespan_state: dict = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    sock.setblocking(False)
    bind = f"http://{repr_socket_addr(sock.family, sock.getsockname())}"

    async def handle(stream: trio.SocketStream) -> None:
        connection = _Connection(
            wrapped, config, context, ConnectionState(lifespan_state.copy()), _TimedStream(stream, limits.send_timeout)
        )
        connection.slots = slots
        connection.limits = limits
        slots.open.add(connection)
        try:
            await connection.run()
        except Exception:
            # One connection's failure (a protocol error in hypercorn, a bug of ours) ends that
            # connection, never the listener.
            log.exception("connection to %s failed", bind)
        finally:
            slots.open.discard(connection)
            slots.release()
            await trio.aclose_forcefully(stream)

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
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
                # A slot for a client that is really there: at the cap, one waiting connection
                # is evicted; if every connection is busy in the daemon, this one waits.
                try:
                    while not slots.take():
                        await slots.released()
                except BaseException:
                    client.close()
                    raise
                connections.start_soon(handle, stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(accept, connections)
                task_status.started([bind])
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            sock.close()
            await context.terminated.set()
            # Whoever waits on a client goes now: idle and half-sent heads close, stalled bodies
            # get a 408, so a slow client cannot hold shutdown for shutdown_grace.
            slots.closing = True
            for waiter in [*slots.open, *slots.waiting]:
                waiter.evict()
            connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
        await lifespan.wait_for_shutdown()
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
