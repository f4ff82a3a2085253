"""One kept-alive HTTP/1.1 connection from an HTTP function's agent to its server.

http.client did this before; its per-request work (a buffered file object made for every
answer, the `email` package parsing the header block, a write per header line) was most of
the agent's own CPU per request, which the instance's CPU share pays. This client writes a
request in one system call and reads the answer through one buffer kept with the
connection. It is strict where it can be and raises http.client's exceptions, so an answer
that is not HTTP is reported as before (`BadStatusLine`, `IncompleteRead`, `LineTooLong`,
"got more than 100 headers", `RemoteDisconnected`):

- the status line is `HTTP/1.x` and a three-digit status; interim answers (1xx but 101)
  are read and dropped;
- at most 100 header lines of at most 64 KiB each (http.client's limits), none with a CR
  or NUL inside (RFC 9110 5.5); an obsolete line folding is joined with a space;
- the body is chunked (the last transfer coding), or as long as one Content-Length (several
  that differ, or one that is not a number, is an error), or runs to the end of the
  connection; a HEAD, a 1xx, 204 or 304 answer has none;
- a body is read up to `limit` + 1 bytes: the caller refuses a longer one;
- a close or reset before any of the answer is RemoteDisconnected or ConnectionResetError
  (a request the caller may send again); within it, IncompleteRead (the request arrived);
- the connection is reused unless the answer says it ends (HTTP/1.0 without keep-alive,
  `Connection: close`, a body that runs to the end), the request could not be sent whole
  (an answer that came before the server closed is still read), or bytes come before a
  request is sent.

Runs on the daemon's interpreter only, but keeps to Python 3.9 like the rest of the
instance side.
"""

from __future__ import annotations

import http.client
import select
import socket

MAX_LINE = 65536
MAX_HEADERS = 100
NO_BODY = frozenset({204, 304})
READ_SIZE = 1 << 16


class Answer:
    __slots__ = ("body", "headers", "status", "will_close")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, will_close: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.will_close = will_close


class Upstream:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # poll, not select: select cannot watch a descriptor of 1024 or more (a forwarding thread's
        # connection with concurrent_num in the hundreds), which then counted as stale every time.
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        self.buffer = bytearray()
        self.answered = 0  # answers read whole: a connection that has had one was kept alive
        self.cut = False  # the server stopped taking the request before all of it was sent
        self.began = False  # a line of the answer to the request sent has come

    def close(self) -> None:
        self.sock.close()

    def stale(self) -> bool:
        """Whether the server wrote or closed before it was asked (idle timeout, or out of turn):
        the connection is then no place for the next request."""
        if self.buffer:
            return True
        try:
            return bool(self.poller.poll(0))  # bytes, the end, an error, or a closed descriptor
        except (OSError, ValueError):
            return True

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """The request in one write. Names and values were checked by the caller (tokens, no
        control characters); values beyond ASCII go out as Latin-1, as http.client sent them."""
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("\r\n")
        try:
            self.sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        except (BrokenPipeError, ConnectionResetError):
            # The server closed before it had the whole request: it may have answered first (a
            # 413 after the headers of a large body), and that answer is still there to read.
            # Without one, `receive` fails as on a closed connection (RemoteDisconnected, or the
            # reset), and the caller decides whether the request may go out again.
            self.cut = True

    def receive(self, method: str, limit: int) -> Answer:
        """The answer to the request sent; its body is cut at `limit` + 1 bytes."""
        self.began = False
        try:
            answer = self._answer(method, limit)
        except ConnectionResetError:
            if self.began or self.buffer:
                # Reset in the middle of an answer: the server had the request, so this is no
                # request lost on a connection closed as it was reused (which may go out again).
                raise http.client.IncompleteRead(bytes(self.buffer)) from None
            raise
        self.answered += 1
        if self.cut:
            answer.will_close = True  # the rest of the request would be read as the next one
        return answer

    def _answer(self, method: str, limit: int) -> Answer:
        first = True
        while True:
            line = self._line(first)
            first = False
            self.began = True
            version, status = status_of(line)
            fields = self._fields()
            if 100 <= status < 200 and status != 101:
                continue
            break
        connection = {t.strip().lower() for n, v in fields if n.lower() == "connection" for t in v.split(",")}
        will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        if method == "HEAD" or status in NO_BODY or status < 200:
            return Answer(status, fields, b"", will_close or status == 101)
        codings = [t.strip().lower() for n, v in fields if n.lower() == "transfer-encoding" for t in v.split(",")]
        if codings and codings[-1] == "chunked":
            return Answer(status, fields, self._chunked(limit), will_close)
        lengths = {v.strip() for n, v in fields if n.lower() == "content-length"}
        if not codings and lengths:
            (length,) = lengths if len(lengths) == 1 else ("",)
            if not length.isdigit() or not length.isascii():
                raise http.client.HTTPException(f"bad Content-Length: {sorted(lengths)!r}"[:200])
            return Answer(status, fields, self._exact(int(length), limit), will_close)
        return Answer(status, fields, self._to_the_end(limit), True)

    def _fill(self) -> bool:
        chunk = self.sock.recv(READ_SIZE)
        self.buffer += chunk
        return bool(chunk)

    def _line(self, first: bool = False) -> bytes:
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                if end + 1 > MAX_LINE:
                    raise http.client.LineTooLong("header line")
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                raise http.client.LineTooLong("header line")
            start = len(self.buffer)
            if not self._fill():
                if first and not self.buffer:
                    raise http.client.RemoteDisconnected("Remote end closed connection without response")
                raise http.client.IncompleteRead(bytes(self.buffer))

    def _fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        lines = 0
        while True:
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return fields
            lines += 1
            if lines > MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            text = line.decode("latin-1").rstrip("\r\n")
            if "\r" in text or "\x00" in text:
                # RFC 9110 5.5: rejected (or made spaces). Kept, the API returned it to the caller
                # as it came; a bare CR may end a line for some readers (http.client split there).
                raise http.client.HTTPException(f"a header line with a CR or NUL in it: {text[:100]!r}")
            if text[:1] in (" ", "\t") and fields:
                # An obsolete line folding: the value goes on (RFC 9112 5.2 lets a client join it).
                name, value = fields[-1]
                fields[-1] = (name, (value + " " + text.strip(" \t")).strip(" \t"))
                continue
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip(" \t"):
                raise http.client.HTTPException(f"a header line that is not a field: {text[:100]!r}")
            fields.append((name, value.strip(" \t")))

    def _exact(self, length: int, limit: int) -> bytes:
        wanted = min(length, limit + 1)
        while len(self.buffer) < wanted:
            if not self._fill():
                raise http.client.IncompleteRead(bytes(self.buffer), length - len(self.buffer))
        return self._take(wanted)

    def _chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            line = self._line()
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text) or len(size_text) > 16:
                raise http.client.IncompleteRead(bytes(body))
            size = int(size_text, 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):
                    pass  # trailer fields, dropped as http.client dropped them
                return bytes(body)
            if len(body) + size > limit:
                # Over the limit: read up to it and stop; the caller refuses the answer.
                body += self._exact(size, limit - len(body))
                return bytes(body[: limit + 1])
            body += self._exact(size, size)
            if self._line() not in (b"\r\n", b"\n"):
                raise http.client.IncompleteRead(bytes(body))

    def _to_the_end(self, limit: int) -> bytes:
        while len(self.buffer) <= limit and self._fill():
            pass
        return self._take(min(len(self.buffer), limit + 1))

    def _take(self, count: int) -> bytes:
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


def status_of(line: bytes) -> tuple[str, int]:
    """The version and status of a status line; http.client's BadStatusLine for anything else."""
    parts = line.decode("latin-1").rstrip("\r\n").split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1"):
        raise http.client.BadStatusLine(line.decode("latin-1")[:200])
    status = parts[1]
    if len(status) != 3 or not status.isdigit() or not status.isascii() or int(status) < 100:
        raise http.client.BadStatusLine(line.decode("latin-1")[:200])
    return parts[0], int(status)
