"""The runtime API's HTTP/1.1 server: one thread on epoll, no thread per connection.

Why not http.server: the agent shares the instance's CPU share (FunctionGraph's 300
millicores at 128 MB, a CFS quota of 30 ms per 100 ms period) with the bootstrap.
ThreadingHTTPServer spent about 1 ms of CPU per invocation (a thread started per
connection, headers parsed by the email package, a scan of /proc/net/tcp per connection
that grew with every TIME_WAIT socket); a bootstrap that opens a connection per call used
the quota up after about 30 invocations and the instance stood still until the next period:
95 invocations/s with a p99 of 74 ms. Here a connection costs a few system calls and a
request a few bytes operations.

What it keeps of http.server's behaviour: keep-alive (HTTP/1.1 unless `Connection: close`,
HTTP/1.0 only with `keep-alive`), `Expect: 100-continue`, chunked bodies, a 400 for a
malformed request (and the connection closed), 405 for a method the API does not have.
What it adds: requests on one connection are answered in order (a pipelined request waits
until the one before it is answered); a connection whose client does not read its answers
gets no further requests processed; at most MAX_CONNECTIONS are open (the least recently
active one is closed for a new one); a head is at most HEAD_LIMIT bytes.

The handler (RuntimeApi) gets each complete request in the loop's thread, answers it with
`Connection.respond` or parks it (a GET waiting for an invocation) and later answers it from
another thread with `Connection.deliver`; `closed` tells it a connection is gone.
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import os
import re
import select
import socket
import threading
from typing import Callable, Protocol

HEAD_LIMIT = 64 * 1024
MAX_HEADERS = 100
# Connections open at once; 1,000 connections a bootstrap opens and leaves idle cost it its
# oldest ones, not the agent's memory or descriptors.
MAX_CONNECTIONS = 256
# Unread bytes a connection may hold while its previous request is not answered yet.
BACKLOG_LIMIT = HEAD_LIMIT
READ_SIZE = 1 << 16
CHUNK_LINE_LIMIT = 1024
HEX = b"0123456789abcdefABCDEF"
READABLE = select.EPOLLIN | select.EPOLLRDHUP
HEAD_END = re.compile(rb"\r?\n\r?\n")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
VERSION = re.compile(rb"HTTP/1\.[0-9]\Z")
REASONS = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    """A request that cannot be read as HTTP/1.1: answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("body", "chunked", "headers", "keep_alive", "left", "method", "path", "size", "target", "trailer")

    def __init__(self, method: str, target: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.size = 0  # Content-Length, when not chunked
        self.chunked = False
        self.left = 0  # chunked: bytes left of the current chunk; -1: its CRLF is next
        self.trailer = False  # chunked: the last chunk came, trailer lines until an empty one


class Handler(Protocol):
    body_limit: int

    def on_request(self, conn: Connection, request: Request) -> None: ...

    def on_oversize(self, conn: Connection, request: Request) -> None:
        """A body over `body_limit` (request.size says how large when it is known); answer it."""

    def on_refused(self, conn: Connection, error: BadRequest) -> None: ...

    def closed(self, conn: Connection) -> None: ...


class Connection:
    """One client connection. Reading and parsing happen in the loop's thread only; writes may
    come from any thread, under `wlock`, and never block (what the socket does not take waits in
    `out` for the loop to write)."""

    __slots__ = (
        "busy",
        "close_after",
        "closed",
        "discard",
        "eof",
        "fd",
        "in_flight",
        "inbuf",
        "keep_alive",
        "nodelay",
        "out",
        "request",
        "scanned",
        "server",
        "sock",
        "wlock",
        "writing",
    )

    def __init__(self, server: Server, sock: _socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.out = bytearray()
        self.wlock = threading.Lock()
        self.request: Request | None = None
        self.discard = 0  # body bytes of a refused request still to read and drop
        # A request is being answered elsewhere (a GET waiting for an invocation): the next one waits.
        self.busy = False
        self.close_after = False
        self.closed = False
        self.eof = False
        self.keep_alive = True
        self.nodelay = False
        # What the handler wants back if the connection closes before `out` is written (an invocation).
        self.in_flight: object = None
        self.writing: bool | str = False  # registered for EPOLLOUT ("out only": not for reading)
        self.scanned = 0  # how much of a partial head was looked through for its end

    # Writing (any thread) ---------------------------------------------------------

    def respond(
        self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None, close: bool = False
    ) -> bool:
        return self.write(response(status, body, headers, close or not self.keep_alive), close or not self.keep_alive)

    def write(self, data: bytes, close: bool = False, in_flight: object = None) -> bool:
        """Send `data` (the rest later, by the loop); False when the connection is gone."""
        with self.wlock:
            if self.closed:
                return False
            if close:
                self.close_after = True
            elif not self.nodelay:
                # Answers are single writes, but on a kept-alive connection the next one would wait
                # for the ACK of the previous one. Set only then: a connection per call (most
                # bootstraps) is spared the system call.
                self.nodelay = True
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.out:
                self.out += data
            else:
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.eof = True
                    return False
                if sent < len(data):
                    self.out += data[sent:]
            if self.out and in_flight is not None:
                self.in_flight = in_flight
        return True

    def deliver(self, data: bytes, in_flight: object) -> bool:
        """The answer to the request this connection waits with (busy), from any thread; False when
        its client went away meanwhile (then the handler gives `in_flight` to another)."""
        with self.wlock:
            gone = self.closed or self.eof or peer_gone(self.sock)
        if gone or not self.write(data, not self.keep_alive, in_flight):
            self.eof = True
            self.busy = False
            self.server.attend(self)
            return False
        with self.wlock:
            if self.close_after and not self.out and not self.closed:
                # Its end of the connection; the loop closes the socket when the client closes its
                # own (or at once, in its thread): no wake-up of the loop for it.
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
        self.busy = False
        self.server.attend(self)
        return True


def peer_gone(sock: _socket.socket) -> bool:
    """Whether the client closed its end (or the connection broke), without reading anything."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def response(status: int, body: bytes, headers: list[tuple[str, str]] | None, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: fgd-runtime-api\r\n"]
    for name, value in headers or ():
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    # One write for head and body: no small segment for Nagle's algorithm to hold back.
    return "".join(lines).encode("latin-1", "replace") + body


class Server:
    def __init__(self, listener: socket.socket, handler: Handler, admit: Callable[[_socket.socket], bool]) -> None:
        self.listener = listener
        self.handler = handler
        # Whether a new connection's peer may use the API (checked before anything is read).
        self.admit = admit
        # epoll itself, not `selectors`: its bookkeeping per call and per registration showed in
        # the profile of an instance at its CPU quota.
        self.epoll = select.epoll()
        self.conns: collections.OrderedDict[int, Connection] = collections.OrderedDict()
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.attention: list[Connection] = []
        self.attention_lock = threading.Lock()
        self.loop_thread = 0

    def serve_forever(self) -> None:
        self.loop_thread = threading.get_ident()
        self.listener.setblocking(False)
        listener, wake = self.listener.fileno(), self.wake_read
        self.epoll.register(listener, select.EPOLLIN)
        self.epoll.register(wake, select.EPOLLIN)
        conns = self.conns
        while True:
            for fd, mask in self.epoll.poll():
                if fd == listener:
                    self.accept()
                elif fd == wake:
                    self.attend_all()
                else:
                    conn = conns.get(fd)
                    if conn is None:
                        continue
                    if mask & select.EPOLLOUT:
                        self.flush(conn)
                    if mask & READABLE and not conn.closed:
                        self.receive(conn)

    # Connections coming and going ---------------------------------------------------

    def accept(self) -> None:
        # One per wake-up: another waiting keeps the listener readable (epoll is level-triggered),
        # and a second accept() would most often fail with EAGAIN, a system call per connection.
        for _ in range(1):
            try:
                # The C-level accept: socket.accept() builds a socket.socket, whose family and
                # type properties go through enum conversions (a third of an accept's time).
                fd, _address = self.listener._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors (EMFILE): the oldest idle one makes room next time
            sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
            if not self.admit(sock):
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            while len(self.conns) >= MAX_CONNECTIONS:
                self.close(next(iter(self.conns.values())))
            sock.setblocking(False)
            conn = Connection(self, sock)
            self.conns[fd] = conn
            self.epoll.register(fd, READABLE)
            # The request often came with the connection: read now rather than after another
            # wake-up. (TCP_DEFER_ACCEPT would make that sure, but stalls connects by seconds
            # once a few hundred were accepted and closed: SYN retransmissions.)
            self.receive(conn)

    def close(self, conn: Connection) -> None:
        """Loop thread only."""
        with conn.wlock:
            if conn.closed:
                return
            conn.closed = True
            conn.out = bytearray()
        self.conns.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(conn.fd)
        with contextlib.suppress(OSError):
            conn.sock.close()
        self.handler.closed(conn)

    # Cross-thread attention -----------------------------------------------------------

    def attend(self, conn: Connection) -> None:
        """After another thread wrote to `conn`: the loop registers what is left to write, closes
        it if it should, and reads on (a request may wait in its buffer)."""
        if threading.get_ident() == self.loop_thread:
            self.settle(conn)
            return
        if not (conn.out or conn.eof or conn.inbuf):
            return  # nothing for the loop to do now: no wake-up (the common case)
        with self.attention_lock:
            self.attention.append(conn)
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_write, b"\0")

    def attend_all(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_read, 4096)
        with self.attention_lock:
            conns, self.attention = self.attention, []
        for conn in conns:
            if not conn.closed:
                self.settle(conn)
                if not conn.closed:
                    self.process(conn)

    def settle(self, conn: Connection) -> None:
        """Loop thread: write interest while anything is left to write; close when done with it."""
        if conn.closed:
            return
        if conn.out:
            if not conn.writing or (conn.eof and conn.writing != "out only"):
                # After the client's end closed, its readiness to read never goes away: polling
                # for it while an answer waits to be read would spin.
                conn.writing = "out only" if conn.eof else True
                self.epoll.modify(conn.fd, select.EPOLLOUT if conn.eof else READABLE | select.EPOLLOUT)
            return
        if conn.writing:
            conn.writing = False
            self.epoll.modify(conn.fd, READABLE)
        if conn.discard and not conn.eof:
            return  # closed once the refused body is read: the client gets its answer
        if conn.close_after or (conn.eof and not conn.busy):
            self.close(conn)

    def flush(self, conn: Connection) -> None:
        with conn.wlock:
            if conn.closed:
                return
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1
            if sent >= 0:
                del conn.out[:sent]
            if not conn.out:
                conn.in_flight = None
        if sent < 0:
            self.close(conn)  # what was in flight goes back to the handler
            return
        self.settle(conn)
        if not conn.closed:
            self.process(conn)

    # Reading and parsing ------------------------------------------------------------

    def receive(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.conns.move_to_end(conn.fd)
        if not data:
            conn.eof = True
            # Requests complete in the buffer are still answered (a client may half-close after
            # sending); one waiting for an invocation is not: nobody would read it.
            self.process(conn)
            if not conn.closed and conn.busy:
                self.close(conn)
            elif not conn.closed:
                self.settle(conn)
            return
        conn.inbuf += data
        if conn.busy or conn.out:
            if len(conn.inbuf) > BACKLOG_LIMIT and not conn.discard and conn.request is None:
                self.close(conn)  # piling requests up without reading the answers
            return
        self.process(conn)

    def process(self, conn: Connection) -> None:
        """Take every complete request the buffer holds, in order (loop thread)."""
        handler = self.handler
        while not conn.closed and not conn.busy and not conn.out:
            try:
                if conn.discard:
                    dropped = min(conn.discard, len(conn.inbuf))
                    del conn.inbuf[:dropped]
                    conn.discard -= dropped
                    if conn.discard:
                        return
                if conn.close_after:
                    self.settle(conn)
                    return
                request = conn.request
                if request is None:
                    request = self.head(conn)
                    if request is None:
                        break
                    conn.request = request
                    conn.keep_alive = request.keep_alive
                    expects = request.headers.get("expect", "").lower() == "100-continue"
                    if not request.chunked and request.size > handler.body_limit:
                        conn.request = None
                        # Read and dropped, so the client gets its 413 on a connection it can still
                        # read (closing mid-upload fails it with a broken pipe instead); not worth
                        # reading past DISCARD_LIMIT, nor when the client waits for a 100 first.
                        if request.size > DISCARD_LIMIT or expects:
                            conn.keep_alive = False
                        else:
                            conn.discard = request.size
                        handler.on_oversize(conn, request)
                        self.settle(conn)
                        continue
                    if expects and not conn.inbuf:
                        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if not self.body(conn, request):
                    if conn.eof:
                        raise BadRequest(400, "the connection closed before the request's body ended")
                    break
            except Stop:
                conn.request = None
                self.settle(conn)
                continue
            except BadRequest as error:
                conn.request = None
                conn.keep_alive = False
                handler.on_refused(conn, error)
                conn.close_after = True
                self.settle(conn)
                return
            conn.request = None
            conn.keep_alive = request.keep_alive and not conn.eof
            handler.on_request(conn, request)
            self.settle(conn)
        if conn.eof and not conn.closed and not conn.busy and not conn.out:
            self.close(conn)

    def head(self, conn: Connection) -> Request | None:
        buf = conn.inbuf
        # Empty lines before a request line are ignored (RFC 9112 2.2).
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":
            del buf[: 2 if buf[:1] == b"\r" else 1]
            conn.scanned = 0
        # From where the last look stopped: a head sent a byte at a time is scanned once.
        match = HEAD_END.search(buf, max(0, conn.scanned - 3), HEAD_LIMIT + 4)
        if match is None:
            conn.scanned = len(buf)
            if len(buf) > HEAD_LIMIT:
                raise BadRequest(400, f"the request's head is over {HEAD_LIMIT:,} bytes")
            if conn.eof and buf:
                raise BadRequest(400, "the connection closed in the middle of a request's head")
            return None
        lines = bytes(buf[: match.start()]).split(b"\n")
        del buf[: match.end()]
        conn.scanned = 0
        parts = lines[0].rstrip(b"\r").split(b" ")
        if len(parts) != 3 or not TOKEN.match(parts[0]) or not VERSION.match(parts[2]) or not parts[1]:
            raise BadRequest(400, "a malformed request line")
        if len(lines) > MAX_HEADERS + 1:
            raise BadRequest(400, f"more than {MAX_HEADERS} header fields")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.rstrip(b"\r").partition(b":")
            if not colon or not TOKEN.match(name):
                raise BadRequest(400, "a malformed header field")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if key in headers:
                if key == "content-length" and headers[key] != text:
                    raise BadRequest(400, "two different Content-Length fields")
                text = headers[key] + ", " + text
            headers[key] = text
        version = parts[2]
        tokens = headers.get("connection", "").lower()
        keep_alive = "close" not in tokens if version != b"HTTP/1.0" else "keep-alive" in tokens
        request = Request(parts[0].decode("ascii"), parts[1].decode("latin-1"), headers, keep_alive)
        encoding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if encoding is not None:
            if length is not None:
                raise BadRequest(400, "both Transfer-Encoding and Content-Length")
            if encoding.lower() != "chunked":
                raise BadRequest(400, f"Transfer-Encoding {encoding[:40]!r} is not supported")
            request.chunked = True
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise BadRequest(400, "Content-Length is not a number")
            request.size = int(length)
        return request

    def body(self, conn: Connection, request: Request) -> bool:
        """Move the request's body out of the buffer; True once it is whole."""
        buf = conn.inbuf
        if not request.chunked:
            need = request.size - len(request.body)
            if need:
                taken = buf[:need]
                del buf[:need]
                request.body += taken
            return len(request.body) == request.size
        while True:
            if request.left > 0:
                taken = buf[: request.left]
                del buf[: request.left]
                request.body += taken
                request.left -= len(taken)
                if request.left:
                    return False
                request.left = -1
            if request.left == -1:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                elif buf[:1] == b"\n":
                    del buf[:1]
                elif len(buf) < 2:
                    return False
                else:
                    raise BadRequest(400, "a chunk of the body does not end where its size says")
                request.left = 0
            end = buf.find(b"\n", 0, CHUNK_LINE_LIMIT)
            if end < 0:
                if len(buf) >= CHUNK_LINE_LIMIT:
                    raise BadRequest(400, "a malformed chunk in the body")
                return False
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if request.trailer:
                if not line:
                    return True
                continue
            digits = line.split(b";", 1)[0].strip(b" \t")
            # Hex digits only: int() also takes "-1", "+5", "0x5" and "5_0".
            if not digits or digits.strip(HEX) or len(digits) > 16:
                raise BadRequest(400, "a malformed chunk in the body")
            size = int(digits, 16)
            if size == 0:
                request.trailer = True
                continue
            if len(request.body) + size > self.handler.body_limit:
                conn.keep_alive = False  # the rest of the body is not read
                self.handler.on_oversize(conn, request)
                raise Stop
            request.left = size


class Stop(Exception):
    """A request already answered while its body was read (it is too large)."""


# A body refused for its size is read and dropped up to this size; past it the connection closes.
DISCARD_LIMIT = 64 * 1024 * 1024
