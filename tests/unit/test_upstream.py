"""The HTTP function agent's client (runtimes/custom/upstream.py) against scripted servers: what a
server may send, well-formed or not, and what the agent makes of it."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from runtimes.custom.upstream import Upstream

LIMIT = 1000


class Scripted:
    """A server on 127.0.0.1 that, per request it reads, sends the next of `answers` (then closes
    when that answer is followed by None). Keeps every request's bytes as they came."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while self.answers:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                while len(data) < length:
                    data += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + data[:length])
                data = data[length:]
                conn.sendall(self.answers.pop(0) or b"")
                if self.answers and self.answers[0] is None:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[Scripted] = []

    def start(*answers: bytes | None) -> Upstream:
        server = Scripted(*answers)
        servers.append(server)
        return Upstream("127.0.0.1", server.port)

    yield start
    for server in servers:
        server.close()


def exchange(conn: Upstream, method: str = "GET", body: bytes = b"", headers: list | None = None):
    conn.send(method, "/p?q=1", headers or [("Host", "h")], body)
    return conn.receive(method, LIMIT)


def test_a_request_goes_out_as_one_write_with_its_body(serve) -> None:
    conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = exchange(conn, "POST", b"pay", [("Host", "h"), ("X-V", "caf\xe9"), ("Content-Length", "3")])
    assert (answer.status, answer.body, answer.will_close) == (200, b"ok", False)
    assert answer.headers == [("Content-Length", "2")]


def test_kept_alive_answers_in_turn_then_a_close(serve) -> None:
    conn = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        b"HTTP/1.1 201 Created\r\nX-A:  spaced  \r\nContent-Length: 1\r\n\r\nb",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nc",
    )
    first, second, third = exchange(conn), exchange(conn), exchange(conn)
    assert [(a.status, a.body) for a in (first, second, third)] == [(200, b"a"), (201, b"b"), (200, b"c")]
    assert second.headers[0] == ("X-A", "spaced")
    assert (first.will_close, second.will_close, third.will_close) == (False, False, True)
    assert conn.answered == 3


def test_chunked_body_with_extensions_and_trailers(serve) -> None:
    conn = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
    )
    assert exchange(conn).body == b"abc0123456789"
    assert conn.buffer == bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")  # nothing more taken
    assert conn.stale(), "bytes before a request: the connection is not reused"


@pytest.mark.parametrize("status", [b"100 Continue", b"102 Processing", b"103 Early Hints"])
def test_interim_answers_are_skipped(serve, status: bytes) -> None:
    conn = serve(b"HTTP/1.1 " + status + b"\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = exchange(conn)
    assert (answer.status, answer.body, answer.headers) == (200, b"ok", [("Content-Length", "2")])


def test_answers_without_a_body_read_none(serve) -> None:
    conn = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
    )
    conn.send("HEAD", "/", [("Host", "h")], b"")
    assert conn.receive("HEAD", LIMIT).body == b""
    assert exchange(conn).status == 204
    assert exchange(conn).status == 304
    assert exchange(conn).body == b"yes"  # each of those left the connection in step


def test_a_body_without_a_length_runs_to_the_end(serve) -> None:
    conn = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nall of it", None)
    answer = exchange(conn)
    assert (answer.body, answer.will_close) == (b"all of it", True)


@pytest.mark.parametrize(
    ("answer", "closes"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", True),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 1\r\n\r\nx", True),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", True),
    ],
)
def test_whether_the_connection_ends(serve, answer: bytes, closes: bool) -> None:
    assert exchange(serve(answer)).will_close is closes


def test_obsolete_line_folding_is_joined(serve) -> None:
    conn = serve(b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two\r\n\tthree\r\nContent-Length: 0\r\n\r\n")
    assert exchange(conn).headers[0] == ("X-Long", "one two three")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3E8\r\n"
        + b"x" * 1000
        + b"\r\n1\r\ny\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"FFFFFFFF\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000,
    ],
)
def test_a_body_over_the_limit_is_cut_one_byte_past_it(serve, answer: bytes) -> None:
    # The caller refuses it (Runtime.ResponseTooLarge) and drops the connection; nothing reads on.
    assert len(exchange(serve(answer)).body) == LIMIT + 1


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (b"HTTP/1.1 1000 Nope\r\n\r\n", http.client.BadStatusLine, "1000"),
        (b"HTTP/2 200\r\n\r\n", http.client.BadStatusLine, "HTTP/2"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", http.client.BadStatusLine, "2x0"),
        (b"HTTP/1.1 099 Low\r\n\r\n", http.client.BadStatusLine, "099"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", http.client.BadStatusLine, "SSH"),
        (b"HTTP/1.1 \xd9\xa2\xd9\xa0\xd9\xa0 OK\r\n\r\n", http.client.BadStatusLine, "HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 101 + b"\r\n", http.client.HTTPException, "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n", http.client.LineTooLong, "header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"a" * 70000, http.client.LineTooLong, "header line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.client.HTTPException, "not a field"),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", http.client.HTTPException, "not a field"),
        (b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n", http.client.HTTPException, "not a field"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            http.client.HTTPException,
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.client.HTTPException, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", http.client.HTTPException, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa2\r\n\r\n", http.client.HTTPException, "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", http.client.IncompleteRead, ""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", http.client.IncompleteRead, ""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", http.client.IncompleteRead, ""),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n",
            http.client.IncompleteRead,
            "",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX\r\n0\r\n\r\n",
            http.client.IncompleteRead,
            "",
        ),
    ],
)
def test_an_answer_that_is_not_http_raises_what_http_client_raised(serve, answer: bytes, error, says: str) -> None:
    with pytest.raises(error) as raised:
        exchange(serve(answer))
    assert says in f"{type(raised.value).__name__}: {raised.value}"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"HTTP/1.1 200", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nContent-Le", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", http.client.IncompleteRead),
    ],
)
def test_a_server_that_closes_mid_answer(serve, answer: bytes, error) -> None:
    with pytest.raises(error):
        exchange(serve(answer, None))


def test_remote_disconnected_is_what_the_agent_retries_on(serve) -> None:
    # The agent sends an idempotent request again after exactly these (a kept-alive connection
    # the server closed as it was reused); the class must stay one of them.
    conn = serve(b"", None)
    with pytest.raises((http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
        exchange(conn)


def test_stale_sees_a_close_or_bytes_out_of_turn(serve) -> None:
    conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", None)
    assert not conn.stale()
    exchange(conn)
    deadline = time.monotonic() + 2
    while not conn.stale() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.stale() and bytes(conn.buffer) == b"EXTRA"


def test_the_request_bytes_are_exactly_what_the_caller_gave(serve) -> None:
    server = Scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    try:
        conn = Upstream("127.0.0.1", server.port)
        conn.send("PUT", "/a%2Fb?x=%20", [("Host", "h"), ("X-V", "caf\xe9"), ("Content-Length", "4")], b"\x00\xff\r\n")
        conn.receive("PUT", LIMIT)
        assert server.requests == [
            b"PUT /a%2Fb?x=%20 HTTP/1.1\r\nHost: h\r\nX-V: caf\xe9\r\nContent-Length: 4\r\n\r\n\x00\xff\r\n"
        ]
    finally:
        server.close()
