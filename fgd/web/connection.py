"""One HTTP/1.1 connection: h11 parses and frames, the ASGI app runs in the connection's own task.

The listener (fgd.web.server) accepts and counts connections; this module serves one of them.
A request is read, the app is called with an http scope and `receive`/`send` functions that
read from and write to the socket directly, and the next request on the connection is read
when the answer is complete (pipelined requests wait in h11's buffer, so they are answered in
order). No task is started per request and no queue stands between the socket and the app: a
request costs the parse, the app, and one write of the whole answer. A plain request (one
shape of HTTP/1.1 request, fgd.web.plain) for a direct route is read and answered without
h11; any other request, and whatever follows a plain one in the same read, goes through h11.

What it keeps of the hardening work (see fgd.web.server for the limits themselves):
- a request head must arrive within `header_timeout` of the connection opening or of its
  first byte; an idle kept-alive connection lives `keep_alive_timeout`; a head over MAX_HEAD
  bytes is 431 however it arrives; a malformed request is 400 (so is one with both
  Content-Length and Transfer-Encoding, or whose target is not a path); CONNECT is 501; each
  closes the connection;
- each pause in a body may last `body_timeout`, then the app is stopped and the answer is
  408 (the connection closes);
- `Expect: 100-continue` is answered when the app first asks for the body, so a request
  refused from its head (401, 404, 413) is refused before its body is sent;
- a body the app did not read is read and dropped after the answer (up to DRAIN_LIMIT), so
  the connection carries the next request; past that the answer says `Connection: close`;
- a chunked body reaches the app in pieces of about one read, not one per chunk;
- an answer the client does not read for `send_timeout` ends the connection; meanwhile the
  connection can be evicted, and on shutdown it goes once its client takes nothing for 1 s;
- a response start with a status outside 200-599 or a header that is not valid HTTP (a name
  that is not a token, a value with a control character or edge whitespace) is replaced by
  a 500; the head is then handed to h11 as its own checked header list, not checked twice;
- every answer, the server's own errors included, carries one X-Request-Id: the answer's
  X-Cff-Request-Id if it has one, else a fresh id (fgd.web.requestid).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import unquote

import h11
import msgspec
import trio

from fgd.config import ListenerConfig
from fgd.errors import ErrorBody
from fgd.invoker import new_request_id
from fgd.web.plain import PlainRequest, plain_request
from fgd.web.requestid import CFF_REQUEST_ID, REQUEST_ID

log = logging.getLogger("fgd.http")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
# A route answered without ASGI (fgd.web.front: the sync invoke, the hot path; fgd.web.gateway:
# the trigger routes): called with the decoded path, the path as sent, the query, the headers
# (names lower-case), the whole body and `respond`, which
# writes the answer's status, headers and body (once the handler returns, its answer is out: a
# shutdown that waits on the handler waits for the answer's writing too). An app offers such
# routes with a `direct(method, path)` method that returns the handler, or None to have the
# request go through ASGI.
Respond = Callable[[int, list, bytes], Awaitable[None]]
DirectHandler = Callable[[str, bytes, bytes, list[tuple[bytes, bytes]], bytes, Respond], Awaitable[None]]

# The largest request head (request line and headers); over it the answer is 431 (hypercorn's
# h11_max_incomplete_size, which the listeners used before).
MAX_HEAD = 16 * 1024
# A head is read at most this much at a time: h11 checks the limit against what it holds of a
# head that is not complete yet, so a larger read could bring in a whole head past the limit.
HEAD_RECV = MAX_HEAD + 1
MAX_RECV = 64 * 1024
# A body left unread by a response (401, 404, 405, 413 ...) is read and dropped, up to this
# much, so the connection can carry the client's next request; past it the response says
# `Connection: close`.
DRAIN_LIMIT = 8 * 1024 * 1024
# Closing a socket with unread bytes in its buffer sends a reset, which can destroy the answer
# still on its way to the client. So a connection closed before its request was read whole
# stops sending and reads (and drops) what comes for this long first.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
# On shutdown an answer still goes to a client that keeps taking it, but one that takes nothing
# for this long is dropped: a client that reads nothing cannot hold shutdown for its grace.
SHUTDOWN_SEND_STALL = 1.0

try:
    # h11's header list: a response head built checked here is not checked again by h11.
    from h11._headers import Headers as _Headers
except ImportError:  # another h11 than the pinned one: h11 checks each response's headers itself
    _Headers = None  # type: ignore[assignment,misc]
# A header name is a token; a value is visible ASCII or obs-text, with spaces or tabs only
# inside (no control characters: stricter than h11, which lets \x01-\x08 and \x7f through).
_FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_CLOSE = (b"connection", b"connection", b"close")
_DISCONNECT = {"type": "http.disconnect"}
_LAST_EMPTY = {"type": "http.request", "body": b"", "more_body": False}
_CONTINUE = h11.InformationalResponse(status_code=100, headers=[])
_NO_BODY_STATUSES = frozenset({204, 304})
_MORE = object()  # a request head is not whole yet
_encoder = msgspec.json.Encoder()


class _Date:
    """The Date header's value, formatted at most once a second."""

    second = 0
    header: tuple[bytes, bytes, bytes] = (b"date", b"date", b"")

    @classmethod
    def now(cls) -> tuple[bytes, bytes, bytes]:
        """(name, lower-case name, value), as h11 keeps headers."""
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.header = (b"date", b"date", formatdate(second, usegmt=True).encode())
        return cls.header


class Slots:
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
        # waiting for a request head or the next piece of a body, then connections whose client
        # does not take its answer (these are left to send_timeout on shutdown, not evicted).
        self.idle: dict[Connection, None] = {}
        self.waiting: dict[Connection, None] = {}
        self.writing: dict[Connection, None] = {}

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
        for group in (self.idle, self.waiting, self.writing):
            for victim in group:
                victim.evict()
                return True
        return False


class _Refused(Exception):
    """The request cannot be served: answered by the server itself, then the connection closes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _head_too_large() -> _Refused:
    return _Refused(431, "FSS.0431", f"the request head is over {MAX_HEAD:,} bytes; send a shorter one")


def _malformed(reason: object) -> _Refused:
    return _Refused(400, "FSS.0400", f"malformed HTTP/1.1 request: {reason}")


def _request_problem(error: h11.RemoteProtocolError) -> _Refused:
    status = error.error_status_hint
    if status == 431:
        return _head_too_large()
    return _Refused(status, f"FSS.0{status}", f"malformed HTTP/1.1 request: {error}")


# The scheme and authority of an absolute-form target (RFC 9112 3.2.2), which a server must take.
_ABSOLUTE = re.compile(rb"(?i:https?)://[^/?#]*")


def _target_parts(method: bytes, target: bytes) -> tuple[bytes, bytes] | None:
    """A request target's path and query, or None if it is not one an origin server takes.

    Apps see a path starting with "/" (or the "*" of OPTIONS): an absolute URL is reduced to
    its path, anything else is refused (Quart fails on an empty path or a URL it cannot parse)."""
    if target[:1] == b"/":  # origin form: almost every request
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*" and method == b"OPTIONS":
        return target, b""
    match = _ABSOLUTE.match(target)
    if match is None:
        return None
    path, _, query = target[match.end() :].partition(b"?")
    if not path:
        return b"/", query
    return (path, query) if path[:1] == b"/" else None


def _logged_path(scope: dict) -> str:
    """The path as the client sent it (visible ASCII, h11 checked): the decoded one may hold a
    line break (%0a) that would forge log lines."""
    return scope.get("raw_path", b"").decode("ascii", "replace")


class _Invalid(Exception):
    """A response start the server will not send."""


# Response header names seen before, each with its lower-case form (checked once, then a lookup);
# a few hundred in practice (fgd's own, Quart's, and those functions behind the gateway use).
_NAMES: dict[bytes, bytes] = {}
_NAMES_MAX = 1024


def _response_headers(status: object, raw: Any, closing: bool) -> Any:
    """A response's headers as h11 sends them, with one X-Request-Id, Date and maybe
    `Connection: close`; _Invalid if the start cannot be sent (status, names, values).

    Built as h11's own header list when it can be (the checks h11 would make, with checked
    names remembered), so h11 does not check every header again for every response."""
    items, checked = _checked_items(status, raw, closing)
    if checked and _Headers is not None:
        return _Headers(items)
    return [(name, value) for name, _, value in items]


def _checked_items(status: object, raw: Any, closing: bool) -> tuple[list[tuple[bytes, bytes, bytes]], bool]:
    """A response's headers checked, as (name, lower-case name, value), and whether their framing
    (Content-Length, Transfer-Encoding) is plain enough to skip h11's own check."""
    if type(status) is not int or not 200 <= status <= 599:
        raise _Invalid(f"status {status!r} is not a final HTTP status (200-599)")
    items: list[tuple[bytes, bytes, bytes]] = []
    request_id = None
    checked = True
    length_seen = False
    for name, value in raw:
        if type(name) is not bytes or type(value) is not bytes:
            raise _Invalid(f"header {name!r}: {value!r} is not bytes")
        lowered = _NAMES.get(name)
        if lowered is None:
            if not _FIELD_NAME.fullmatch(name):
                raise _Invalid(f"header name {name[:100]!r} is not an HTTP token")
            lowered = name.lower()
            if len(_NAMES) < _NAMES_MAX and len(name) <= 64:
                _NAMES[name] = lowered
        if lowered == REQUEST_ID:
            continue  # one X-Request-Id, the server's (fgd.web.requestid)
        if not _FIELD_VALUE.fullmatch(value):
            raise _Invalid(f"the value of header {name.decode('latin-1')!r} is not valid in HTTP")
        if lowered == CFF_REQUEST_ID:
            request_id = value
        elif lowered == b"content-length":
            # h11 merges and checks lengths itself; the plain case is checked here.
            checked = checked and not length_seen and value.isdigit() and len(value) <= 20
            length_seen = True
        elif lowered == b"transfer-encoding":
            checked = False
        items.append((name, lowered, value))
    items.append((REQUEST_ID, REQUEST_ID, request_id or new_request_id().encode()))
    items.append(_Date.now())
    if closing:
        items.append(_CLOSE)
    return items, checked


def _check_length(items: list[tuple[bytes, bytes, bytes]], body: bytes) -> None:
    """_Invalid unless the headers frame `body` by one Content-Length that is its length."""
    lengths = [value for _, name, value in items if name in (b"content-length", b"transfer-encoding")]
    if lengths != [b"%d" % len(body)]:
        raise _Invalid(f"the answer's framing {lengths!r} does not give its body's {len(body)} bytes")


def _says_close(items: list[tuple[bytes, bytes, bytes]]) -> bool:
    """Whether a response's Connection header holds `close` (h11's own test, a comma list)."""
    return any(
        name == b"connection" and b"close" in (token.strip().lower() for token in value.split(b","))
        for _, name, value in items
    )


def _head_bytes(status: int, items: Any) -> bytes:
    """A response head as h11 writes it: the status with an empty reason, the headers in order.
    `items` hold each header's name first and its value last (already checked)."""
    lines = [b"HTTP/1.1 %d \r\n" % status]
    for item in items:
        lines.append(item[0] + b": " + item[-1] + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Direct(NamedTuple):
    """A plain request a direct route takes."""

    handler: DirectHandler
    request: PlainRequest
    method: str
    path: bytes  # as sent
    decoded: str
    query: bytes


class Connection:
    """One client's connection: its requests one after another, each through the app."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        app: ASGIApp,
        limits: ListenerConfig,
        slots: Slots,
        server: tuple[str, int] | None,
    ) -> None:
        self.sock = sock
        # The socket under trio's: writes try it directly first (most answers fit its buffer).
        self.raw = sock._sock  # type: ignore[attr-defined]
        self.app = app
        self.direct: Callable[[str, str], DirectHandler | None] | None = getattr(app, "direct", None)
        self.limits = limits
        self.slots = slots
        self.server = server
        try:
            peer = sock.getpeername()
            self.client: tuple[str, int] | None = (peer[0], peer[1])
        except OSError:
            self.client = None
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # What h11 holds of the client's bytes, measured to learn how long a head was.
        self._buffer: Any = getattr(self.h11, "_receive_buffer", None)
        # Whether a request was answered: later idle spells are keep-alive ones.
        self.served = False
        # The client is gone (reset, closed, or it read nothing for send_timeout): writes are dropped.
        self.gone = False
        self.evicted = False
        # Where the connection waits on its client (a head, a body piece), so that eviction or a
        # shutdown can end the wait.
        self._wait: trio.CancelScope | None = None
        # Where it waits for its client to take an answer (the app may read and write at once).
        self._send_wait: trio.CancelScope | None = None
        self._reset_request()

    def _reset_request(self) -> None:
        self.scope: dict[str, Any] | None = None
        self.head: bytes | None = None  # a response head not yet written (sent with the body)
        self.started = False
        self.finished = False
        self.no_body = False
        self.body_done = False
        self.cut_short = False  # the client closed before its body was complete
        self.pending: dict | None = None  # the body's first message, read with the head
        self.received = 0
        self.declared: int | None = None
        self.continue_due = False
        self.refusal: _Refused | None = None
        self.body_error: h11.RemoteProtocolError | None = None
        self.app_scope: trio.CancelScope | None = None
        self._finished_event: trio.Event | None = None
        # A plain request (fgd.web.plain), read without h11: answered without it too.
        self.plain = False

    # -- the connection's loop ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    request = await self._next_request()
                except _Refused as refusal:
                    await self._refuse(refusal)
                    return
                if request is None:
                    return
                if type(request) is _Direct:
                    await self._serve_plain(request)
                else:
                    await self._serve(request)
                if not await self._next_cycle():
                    return
        finally:
            self._forget()
            await self._close()

    def evict(self) -> None:
        """End the wait on the client now (the listener is full, or shutting down)."""
        self.evicted = True
        self._forget()
        if self._wait is not None:
            self._wait.cancel()
        if self._send_wait is not None:
            self._send_wait.cancel()

    def hurry(self) -> None:
        """On shutdown: the answer being sent may now pause at most SHUTDOWN_SEND_STALL."""
        wait = self._send_wait
        if wait is not None:
            wait.deadline = min(wait.deadline, trio.current_time() + SHUTDOWN_SEND_STALL)

    def _forget(self) -> None:
        self.slots.idle.pop(self, None)
        self.slots.waiting.pop(self, None)
        self.slots.writing.pop(self, None)

    def _next_head_event(self) -> Any:
        """h11's next event, a head at most MAX_HEAD bytes long (else a 431)."""
        buffer = self._buffer
        held = len(buffer) if buffer is not None else 0
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as error:
            raise _request_problem(error) from None
        # h11 checks the limit only against a head it holds incomplete: a head completed by one
        # read (a second piece, or the rest of a read that ended a body) is measured here.
        if type(event) is h11.Request and buffer is not None and held - len(buffer) > MAX_HEAD:
            raise _head_too_large()
        return event

    async def _next_request(self) -> h11.Request | _Direct | None:
        """The next request's head, or None if the client closed, was too slow, or was evicted."""
        conn = self.h11
        event = self._next_head_event()
        if type(event) is h11.Request:
            # Pipelined behind the last one and in already: the other tasks run first, as after a
            # read. A read holds hundreds of small requests; answered at once (refused), they kept
            # the event loop for tens of milliseconds at a time, at each step of others' requests.
            await trio.lowlevel.checkpoint()
            return event
        if event is not h11.NEED_DATA or self.slots.closing:
            return None
        # Under load the next head is in already by the time the answer is written (measured: 9
        # times in 10): it is read and parsed without arming a timeout for a wait that never comes.
        try:
            first: bytes | None = self.raw.recv(HEAD_RECV)
        except BlockingIOError:
            first = None
        except OSError:
            return None
        if first is not None:
            # As trio's read would: let the other tasks run, so a client whose requests keep
            # coming (pipelined, refused at once) cannot keep the event loop to itself.
            await trio.lowlevel.checkpoint()
            head = self._head_with(first)
            if head is not _MORE:
                return head
        limits = self.limits
        # A fresh connection, or one with part of a head already in: header_timeout. An idle
        # kept-alive connection: keep_alive_timeout until its next head's first byte.
        started = not self.served or bool(conn.trailing_data[0])
        deadline = trio.current_time() + (limits.header_timeout if started else limits.keep_alive_timeout)
        with trio.CancelScope(deadline=deadline) as wait:
            self._wait = wait
            (self.slots.waiting if started else self.slots.idle)[self] = None
            try:
                while True:
                    data = await self._receive_head_piece()
                    if not started and data:
                        started = True
                        wait.deadline = min(wait.deadline, trio.current_time() + limits.header_timeout)
                        self.slots.idle.pop(self, None)
                        self.slots.waiting[self] = None
                    head = self._head_with(data)
                    if head is not _MORE:
                        return head
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            finally:
                self._wait = None
                self._forget()
        return None  # timed out, or evicted: closed without an answer

    def _head_with(self, data: bytes) -> Any:
        """h11 given `data` (b"": the client closed): the request whose head is now whole, None if
        the connection ended before one began, or _MORE while the head is incomplete. A plain
        request for a direct route that `data` begins with is taken without h11 (a _Direct)."""
        if data and self.direct is not None and self._buffer is not None and not len(self._buffer):
            direct = self._direct_request(data)
            if direct is not None:
                return direct
        self.h11.receive_data(data)
        event = self._next_head_event()
        if type(event) is h11.Request:
            return event
        return _MORE if event is h11.NEED_DATA else None

    def _direct_request(self, data: bytes) -> _Direct | None:
        """The plain request `data` begins with, whole, if a direct route takes it; h11 is given
        what follows it (a pipelined request). None leaves `data` to h11 whole.

        A body not all in goes through h11 and the app, which read it as it comes: a request can
        be refused from its head (401, 404, 413) before its body is sent, and a client that
        waits for that answer before it sends the body (some do) gets it at once."""
        request = plain_request(data, MAX_HEAD)
        if request is None or request.body is None or request.method == b"CONNECT":
            return None  # (CONNECT: refused on h11's path, 501)
        path, _, query = request.target.partition(b"?")
        method = request.method.decode("ascii")
        decoded = unquote(path.decode("ascii"))
        assert self.direct is not None
        handler = self.direct(method, decoded)
        if handler is None:
            return None
        if request.end < len(data):
            self.h11.receive_data(data[request.end :])
        return _Direct(handler, request, method, path, decoded, query)

    async def _receive_head_piece(self) -> bytes:
        """The next bytes of a head (b"" once the client closed), waited for: called when a read
        found nothing (trio's own read would try once more first, and add a scheduling round)."""
        raw = self.raw
        while True:
            await trio.lowlevel.wait_readable(raw)
            try:
                return raw.recv(HEAD_RECV)
            except BlockingIOError:
                continue

    async def _next_cycle(self) -> bool:
        """Ready the connection for the next request: read and drop what is left of this one's body."""
        conn = self.h11
        if self.plain:
            # h11 saw none of it: it still waits for a request.
            if self.gone or self.slots.closing or not self.finished:
                return False
            self.served = True
            self._reset_request()
            return True
        if self.gone or self.slots.closing or conn.our_state is not h11.DONE:
            return False
        if conn.their_state is h11.SEND_BODY and not await self._drain():
            return False
        if conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        self.served = True
        self._reset_request()
        return True

    async def _drain(self) -> bool:
        dropped = 0
        while dropped <= DRAIN_LIMIT:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA:
                data = await self._read_body_piece()
                if not data:
                    return False
                self.h11.receive_data(data)
            elif type(event) is h11.Data:
                dropped += len(event.data)
            else:
                return type(event) is h11.EndOfMessage
        return False

    async def _close(self) -> None:
        conn = self.h11
        try:
            if (
                self.finished
                and not self.gone
                and not self.plain
                and conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
            ):
                # An answer is out, its request maybe not all in: stop sending, then take what the
                # client still sends for a moment (see LINGER_SECONDS). Evictable meanwhile.
                self.sock.shutdown(trio.socket.SHUT_WR)
                with trio.move_on_after(LINGER_SECONDS) as wait:
                    self._wait = wait
                    self.slots.waiting[self] = None
                    lingered = 0
                    while lingered < LINGER_BYTES:
                        data = await self.sock.recv(MAX_RECV)
                        if not data:
                            break
                        lingered += len(data)
        except OSError:
            pass
        finally:
            self._wait = None
            self._forget()
            self.sock.close()

    # -- one request ----------------------------------------------------------------------------

    async def _serve(self, request: h11.Request) -> None:
        conn = self.h11
        if request.method == b"CONNECT":
            # No tunnels: h11 would take a 2xx answer as the start of one (and refuse its body).
            await self._refuse(_Refused(501, "FSS.0501", "CONNECT is not supported: the daemon is not a proxy"))
            return
        parts = _target_parts(request.method, request.target)
        if parts is None:
            await self._refuse(_malformed("the request target is not a path starting with /"))
            return
        path, query = parts
        # ASGI's (name, value) pairs, names lower-case: h11 keeps them so, beside the raw names.
        items = getattr(request.headers, "_full_items", None)
        headers = [(name, value) for _, name, value in items] if items is not None else list(request.headers)
        declared = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if chunked and declared is not None:
            # h11 would go by the chunks; a proxy in front may go by the length, and take what the
            # daemon reads as a second request for part of this one's body (request smuggling).
            await self._refuse(_malformed("Content-Length and Transfer-Encoding together; send one of them"))
            return
        # The body's first piece is often in with the head; reading it now also finds a malformed
        # body (a bad chunk size) before the app answers, so that answer is the 400.
        try:
            first = conn.next_event()
        except h11.RemoteProtocolError as error:
            await self._refuse(_request_problem(error))
            return
        if type(first) is h11.EndOfMessage:
            self.body_done = True
            self.pending = _LAST_EMPTY
        elif type(first) is h11.Data:
            self.pending = self._data_message(first.data)
        self.continue_due = conn.they_are_waiting_for_100_continue
        if not self.body_done:
            self.declared = declared
        # As sent: methods are case-sensitive, and h11 frames the answer by this one ("head" is
        # not HEAD, its answer has a body).
        method = request.method.decode("ascii")
        self.no_body = method == "HEAD"
        decoded = unquote(path.decode("ascii"))
        if self.body_done and self.direct is not None:
            handler = self.direct(method, decoded)
            if handler is not None:
                assert self.pending is not None
                body = self.pending["body"]
                self.pending = None
                await self._serve_directly(handler, method, path, decoded, query, headers, body)
                return
        self.scope = scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version.decode("ascii"),
            "method": method,
            "scheme": "http",
            "path": decoded,
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "extensions": {},
        }
        failed = False
        try:
            if self.body_done:
                # The whole body came with the head (most requests): nothing left that could
                # stall or be malformed, so no scope to stop the app with.
                await self.app(scope, self.receive, self.send)
            else:
                with trio.CancelScope() as self.app_scope:
                    await self.app(scope, self.receive, self.send)
        except Exception:
            failed = True
            log.exception("error answering %s %s", method, _logged_path(scope))
        if self.refusal is not None and not self.started:
            await self._refuse(self.refusal)
            return
        if self.finished:
            return
        if self.started:
            # Half an answer: the client cannot tell it from a whole one but by the close.
            if not failed:
                log.error("%s %s: the answer was left unfinished", method, _logged_path(scope))
            self.gone = True
            return
        if self.cut_short:
            return  # the app stopped when told its client went away: nothing to answer
        if not failed:
            log.error("%s %s: the daemon sent no answer", method, _logged_path(scope))
        await self._refuse(_Refused(500, "FSS.0500", "internal error; see the daemon's log"))

    async def _serve_directly(
        self,
        handler: DirectHandler,
        method: str,
        raw_path: bytes,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """Answer a request whose body came whole with its head through a direct route: the
        checks of a response start, as for the app's, but no ASGI messages."""
        self.scope = {"method": method, "raw_path": raw_path}  # what the log says of it
        try:
            await handler(path, raw_path, query, headers, body, self._respond)
        except Exception:
            log.exception("error answering %s %s", method, _logged_path(self.scope))
            await self._refuse(_Refused(500, "FSS.0500", "internal error; see the daemon's log"))
            return
        if not self.started:
            log.error("%s %s: the daemon sent no answer", method, _logged_path(self.scope))
            await self._refuse(_Refused(500, "FSS.0500", "internal error; see the daemon's log"))

    async def _serve_plain(self, direct: _Direct) -> None:
        """A plain request (read without h11) through its direct route."""
        self.plain = True
        self.body_done = True
        self.no_body = direct.method == "HEAD"
        request = direct.request
        assert request.body is not None  # whole: _direct_request takes no other
        await self._serve_directly(
            direct.handler, direct.method, direct.path, direct.decoded, direct.query, request.headers, request.body
        )

    async def _respond(self, status: int, headers: list, body: bytes) -> None:
        """A direct route's whole answer (`Respond`)."""
        if self.started:
            return
        if self.plain:
            await self._respond_plain(status, headers, body)
            return
        await self._start(status, headers)
        await self._send_body(body, more=False)

    def _data_message(self, data: bytes) -> dict:
        """An http.request message for `data` and whatever more of the body h11 already holds;
        the last one if the body's end is already in.

        h11 gives one Data event per chunk: a body of one-byte chunks would otherwise be a
        message (a bytes object) per byte, kept by the routes until the body is whole, 30-40
        times the memory the body budget counts. Joined here, a message is about one read."""
        conn = self.h11
        pieces: list[bytes] | None = None
        while True:
            try:
                following = conn.next_event()
            except h11.RemoteProtocolError as error:
                following = None
                self.body_error = error  # reported on the next read
            if type(following) is not h11.Data:
                break
            if pieces is None:
                pieces = [data]
            pieces.append(following.data)
        if pieces is not None:
            data = b"".join(pieces)
        self.received += len(data)
        if type(following) is h11.EndOfMessage:
            self.body_done = True
            return {"type": "http.request", "body": data, "more_body": False}
        return {"type": "http.request", "body": data, "more_body": True}

    # -- ASGI -------------------------------------------------------------------------------------

    async def receive(self) -> dict:
        message = self.pending
        if message is not None:
            self.pending = None
            return message
        if self.body_done or self.gone:
            # The whole body is in: the app waits for the end of its answer (Quart reads in a
            # task of its own until then).
            if not self.finished:
                if self._finished_event is None:
                    self._finished_event = trio.Event()
                await self._finished_event.wait()
            return _DISCONNECT
        if self.continue_due:
            self.continue_due = False
            await self._write(self.h11.send(_CONTINUE))
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                # The first error h11 found in the body (later ones only say it is in error).
                self._stop_app(_request_problem(self.body_error or error))
                await trio.lowlevel.checkpoint()
                return _DISCONNECT  # not reached: the app was cancelled
            if event is h11.NEED_DATA:
                data = await self._read_body_piece()
                if data is None:
                    self._stop_app(self._stalled())
                    await trio.lowlevel.checkpoint()
                    return _DISCONNECT  # not reached
                if not data:
                    # The client closed (or half-closed) before its body was complete: h11 is not
                    # told, so the connection closes after the answer (which may still be read).
                    self.body_done = self.cut_short = True
                    return _DISCONNECT
                conn.receive_data(data)
            elif type(event) is h11.Data:
                return self._data_message(event.data)
            else:
                self.body_done = True
                return _LAST_EMPTY

    async def _read_body_piece(self) -> bytes | None:
        """The next bytes of a body (b"" if the client closed), or None if none came in body_timeout."""
        with trio.move_on_after(self.limits.body_timeout) as wait:
            self._wait = wait
            self.slots.waiting[self] = None
            try:
                return await self.sock.recv(MAX_RECV)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            finally:
                self._wait = None
                self.slots.waiting.pop(self, None)
        return None

    def _stalled(self) -> _Refused:
        if self.evicted and self.slots.closing:
            message = "the daemon is shutting down; send the request again when it is back"
        elif self.evicted:
            message = "the listener is full and this request's body was the slowest to arrive; send it at once"
        else:
            message = f"the request body stalled for more than {self.limits.body_timeout:g} s; send it at once"
        return _Refused(408, "FSS.0408", message)

    def _stop_app(self, refusal: _Refused) -> None:
        """Stop the app (it may hold part of the body) and answer `refusal` instead."""
        log.debug("%s %s: %s", self.scope["method"], _logged_path(self.scope), refusal.message)  # type: ignore[index,arg-type]
        self.refusal = refusal
        self.gone = self.gone or self.started  # an answer already begun cannot be completed
        assert self.app_scope is not None
        self.app_scope.cancel()

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started or self.refusal is not None:
                return
            await self._start(message.get("status"), message.get("headers", ()))
        elif kind == "http.response.body":
            await self._send_body(message.get("body", b""), message.get("more_body", False))

    async def _send_body(self, body: bytes, more: bool) -> None:
        """A piece of the answer (with its head, the first time); the last one if not `more`."""
        if not self.started or self.finished:
            return
        conn = self.h11
        out = self.head or b""
        self.head = None
        if body and not self.no_body:
            out += conn.send(h11.Data(data=body))
        if not more:
            out += conn.send(h11.EndOfMessage())
            self.finished = True
        if out:
            await self._write(out)
        if not more and self._finished_event is not None:
            # After the write: quart-trio stops its request task when it sees http.disconnect.
            self._finished_event.set()

    async def _respond_plain(self, status: int, raw_headers: list, body: bytes) -> None:
        """The answer to a plain request, framed here as h11 would (h11 saw no request to answer)."""
        try:
            items = _checked_items(status, raw_headers, self._closing_after())[0]
            if self.no_body or status in _NO_BODY_STATUSES:
                body = b""  # as h11 frames them: the head alone
            else:
                _check_length(items, body)
        except _Invalid as error:
            self._invalid_response(error)
            await self._error(500, "FSS.0500", "the daemon produced an invalid HTTP response; see its log")
            return
        self.started = self.finished = True
        await self._write(_head_bytes(status, items) + body)
        if _says_close(items):
            # As h11 would after an answer that says so (MUST_CLOSE): a request pipelined behind
            # this one is not served, as the client, told "close", takes it (and may send again).
            self.gone = True

    def _invalid_response(self, error: Exception) -> None:
        scope = self.scope or {}
        log.error("refused to send an invalid response to %s %s: %s", scope.get("method"), _logged_path(scope), error)
        self.started = True  # the app's answer is replaced: what it sends next is dropped
        self.finished = True

    async def _start(self, status: object, raw_headers: Any) -> None:
        try:
            headers = _response_headers(status, raw_headers, self._closing_after())
            head = self.h11.send(h11.Response(status_code=status, headers=headers))  # type: ignore[arg-type]
        except (_Invalid, h11.LocalProtocolError) as error:
            self._invalid_response(error)
            await self._error(500, "FSS.0500", "the daemon produced an invalid HTTP response; see its log")
            return
        self.started = True
        if status in _NO_BODY_STATUSES:
            self.no_body = True
        self.head = head

    def _closing_after(self) -> bool:
        """Whether this answer ends the connection (said with `Connection: close`)."""
        if self.slots.closing:
            return True
        if self.body_done:
            return False
        if self.continue_due:
            # The client waits for 100 Continue before it sends its body; refused without it, it
            # may send the body or the next request: only a close makes that clear.
            return True
        return self.declared is not None and self.declared - self.received > DRAIN_LIMIT

    # -- the server's own answers -----------------------------------------------------------------

    async def _refuse(self, refusal: _Refused) -> None:
        conn = self.h11
        if self.started or conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.gone = True
            return
        log.debug("answering %d: %s", refusal.status, refusal.message)
        await self._error(refusal.status, refusal.code, refusal.message)

    async def _error(self, status: int, code: str, message: str) -> None:
        """An error answer of the server's own; the connection closes after it."""
        body = _encoder.encode(ErrorBody(code, message))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID, new_request_id().encode()),
            _Date.now()[::2],
            (b"connection", b"close"),
        ]
        if self.plain:
            self.head = None
            self.finished = True
            await self._write(_head_bytes(status, headers) + (b"" if self.no_body else body))
            self.gone = True  # as the answer says: h11 closes after it (MUST_CLOSE), so does this
            return
        conn = self.h11
        try:
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if not self.no_body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.gone = True
            return
        self.head = None
        self.finished = True
        await self._write(out)

    # -- writing ----------------------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        """Send `data` whole; a client that has not taken it within send_timeout is dropped."""
        if self.gone:
            return
        raw = self.raw
        try:
            sent = raw.send(data)  # the socket is non-blocking: most answers go at once
        except BlockingIOError:
            sent = 0
        except OSError:
            self.gone = True
            return
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        # Until the whole answer is out the connection cannot carry another: if the wait ends any
        # other way (send_timeout, eviction, the app cancelled, shutdown) the connection goes.
        self.gone = True
        slots = self.slots
        deadline = trio.current_time() + self.limits.send_timeout
        with trio.CancelScope(deadline=deadline) as wait:
            # A client that reads nothing waits on its client like a slow one: evictable when the
            # listener is full (else a full listener of them makes new clients wait send_timeout).
            self._send_wait = wait
            slots.writing[self] = None
            try:
                while view:
                    if slots.closing:
                        self.hurry()
                    await trio.lowlevel.wait_writable(raw)
                    try:
                        view = view[raw.send(view) :]
                    except BlockingIOError:
                        continue
                    except OSError:
                        return
                    if slots.closing:
                        wait.deadline = min(deadline, trio.current_time() + SHUTDOWN_SEND_STALL)
            finally:
                self._send_wait = None
                slots.writing.pop(self, None)
            self.gone = False
            return
        if slots.closing:
            log.debug("shutting down and the client stopped reading its answer; dropping it")
        else:
            log.debug("the client did not read its answer within %g s; dropping it", self.limits.send_timeout)
