"""The HTTP function agent's client (runtimes/custom/upstream.py) against a hostile server: answers
that would shift every later answer by one on a kept-alive connection, an answer that comes while
the request is still being sent, and answers dribbled a byte at a time."""

from __future__ import annotations

import http.client
import os
import random
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from runtimes.custom.upstream import Upstream
from tests.conftest import read_head

LIMIT = 6 * 1024 * 1024
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], Upstream]]:
    """A server on 127.0.0.1 whose one connection `act` handles; an Upstream connected to it."""
    listeners: list[socket.socket] = []

    def start(act: Callable[[socket.socket], None]) -> Upstream:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                act(conn)

        threading.Thread(target=run, daemon=True).start()
        return Upstream("127.0.0.1", listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def unbufferable() -> int:
    """A body size loopback TCP cannot hold in buffers: the sender's most plus the receiver's, and
    1 MB. A 4 MB body could be all taken by the kernel (tcp_wmem's most is 4 MB), so a server that
    never read it did not always cut the send."""
    most = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as limits:
            most += int(limits.read().split()[2])
    return most + (1 << 20)


def waits(conn: Upstream) -> bool:
    """Whether the connection shows bytes or its end waiting within a moment (they may be in flight)."""
    deadline = time.monotonic() + 2
    while not conn.stale() and time.monotonic() < deadline:
        time.sleep(0.005)
    return conn.stale()


@pytest.mark.parametrize("keep_alive", [False, True])
def test_an_answer_before_a_large_body_is_read_stands_when_the_server_closes(server, keep_alive: bool) -> None:
    # The server refuses the body after its headers and closes with most of it unread: the kernel resets
    # the connection and the send fails. Its answer came first: it is what the caller gets (it was
    # "did not answer: ConnectionResetError", with http.client as with this client at first).
    def refuse(conn: socket.socket) -> None:
        read_head(conn)
        close = b"" if keep_alive else b"Connection: close\r\n"
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\n" + close + b"Content-Length: 3\r\n\r\nbig")

    conn = server(refuse)
    body = b"x" * unbufferable()
    conn.send("POST", "/", [("Host", "h"), ("Content-Length", str(len(body)))], body)
    answer = conn.receive("POST", LIMIT)
    assert (answer.status, answer.body) == (413, b"big")
    # The request was not all sent: the connection is no place for another, whatever it said.
    assert answer.will_close


def test_a_server_that_closes_mid_request_without_answering_is_a_lost_request(server) -> None:
    # The classes the agent decides on: sent again only when the method may be repeated.
    def vanish(conn: socket.socket) -> None:
        read_head(conn)

    conn = server(vanish)
    body = b"x" * unbufferable()
    conn.send("PUT", "/", [("Host", "h"), ("Content-Length", str(len(body)))], body)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        conn.receive("PUT", LIMIT)


@pytest.mark.parametrize(
    ("method", "answer", "body"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED, b"ok"),  # longer than its length
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 45\r\n\r\n" + SMUGGLED, b""),  # a HEAD answer with a body
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 45\r\n\r\n" + SMUGGLED, b""),
        ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED, b""),
        (
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            + SMUGGLED,
            b"ok",
        ),
    ],
)
def test_bytes_past_an_answer_mark_the_connection_unfit_for_the_next_request(
    server, method: str, answer: bytes, body: bytes
) -> None:
    def reply(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(answer)
        time.sleep(1)

    conn = server(reply)
    conn.send(method, "/", [("Host", "h")], b"")
    got = conn.receive(method, LIMIT)
    assert (got.status in (200, 204, 304), got.body) == (True, body)
    # The agent replaces a connection with bytes waiting before it sends the next request there:
    # the smuggled answer goes to nobody.
    assert waits(conn)


def test_two_answers_in_separate_writes_are_seen_before_the_next_request(server) -> None:
    def reply(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.05)
        conn.sendall(SMUGGLED)
        time.sleep(1)

    conn = server(reply)
    conn.send("GET", "/", [("Host", "h")], b"")
    assert conn.receive("GET", LIMIT).body == b"ok"
    assert not conn.stale()  # nothing yet: the second answer is 50 ms away
    assert waits(conn)


def reset(conn: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed server's kernel may."""
    time.sleep(0.05)  # what was sent is in first
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize(
    "part",
    [
        b"H",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n",
    ],
)
def test_a_reset_in_the_middle_of_an_answer_is_no_lost_request(server, part: bytes) -> None:
    # The server had the request: a ConnectionResetError here made the agent send a GET or PUT
    # again on a new connection, as if the server had closed an idle connection.
    def half(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(part)
        reset(conn)

    conn = server(half)
    conn.send("GET", "/", [("Host", "h")], b"")
    with pytest.raises(http.client.IncompleteRead):
        conn.receive("GET", LIMIT)


def test_a_reset_before_any_answer_is_a_lost_request(server) -> None:
    def drop(conn: socket.socket) -> None:
        read_head(conn)
        reset(conn)

    conn = server(drop)
    conn.send("GET", "/", [("Host", "h")], b"")
    with pytest.raises(ConnectionResetError):
        conn.receive("GET", LIMIT)


def test_an_interim_answer_then_a_close_is_no_lost_request(server) -> None:
    # A 100 says the server has the request: the agent must not send it again, so this is not
    # RemoteDisconnected (the class it repeats a GET after); http.client raised RemoteDisconnected.
    def interim(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    conn = server(interim)
    conn.send("GET", "/", [("Host", "h")], b"")
    with pytest.raises(http.client.IncompleteRead):
        conn.receive("GET", LIMIT)


@pytest.mark.parametrize(
    "line",
    [b"X-A: a\x00b", b"X-A: a\rX-Cff-Request-Id: forged", b"X-A: a\r\n b\x00"],
)
def test_a_header_with_a_cr_or_nul_is_an_invalid_answer(server, line: bytes) -> None:
    # RFC 9110 5.5: a recipient MUST reject such a field or replace the characters with SP. They
    # were kept (the gateway refused the answer, but the sync API returned it as it came); the
    # email parser behind http.client split the line at the CR into a second header.
    def reply(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 0\r\n\r\n")

    conn = server(reply)
    conn.send("GET", "/", [("Host", "h")], b"")
    with pytest.raises(http.client.HTTPException, match="CR or NUL"):
        conn.receive("GET", LIMIT)


def test_other_bytes_of_a_header_value_are_kept_for_the_daemon_to_judge(server) -> None:
    # Latin-1 text and other control characters may be retained (RFC 9110 5.5); the gateway
    # refuses what it cannot send, the API returns them as JSON data.
    def reply(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\x01\r\nContent-Length: 0\r\n\r\n")

    conn = server(reply)
    conn.send("GET", "/", [("Host", "h")], b"")
    assert conn.receive("GET", LIMIT).headers == [("X-A", "caf\xe9\x01"), ("Content-Length", "0")]


def test_a_full_size_body_dribbled_in_small_writes_is_read_whole(server) -> None:
    body = bytes(range(256)) * (LIMIT // 256)

    def dribble(conn: socket.socket) -> None:
        read_head(conn)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        for start in range(0, len(data), 1000):
            conn.sendall(data[start : start + 1000])

    conn = server(dribble)
    started = time.monotonic()
    conn.send("GET", "/", [("Host", "h")], b"")
    answer = conn.receive("GET", LIMIT)
    assert answer.body == body and len(answer.body) == LIMIT
    assert time.monotonic() - started < 5


def test_one_byte_chunks_cost_linear_time(server) -> None:
    # 200,000 chunks of one byte (1.2 MB on the wire): about 0.3 s; anything quadratic would be hours.
    count = 200_000

    def chunks(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * count + b"0\r\n\r\n")
        time.sleep(1)

    conn = server(chunks)
    started = time.process_time()
    conn.send("GET", "/", [("Host", "h")], b"")
    assert conn.receive("GET", LIMIT).body == b"x" * count
    assert time.process_time() - started < 3


def test_chunks_past_the_limit_stop_the_read_at_once(server) -> None:
    # A body that never ends, in chunks: read to the limit and one byte more, not on until the
    # timeout (the caller refuses it as Runtime.ResponseTooLarge at once).
    def endless(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        try:
            while True:
                conn.sendall(chunk * 16)
        except OSError:
            return

    conn = server(endless)
    conn.send("GET", "/", [("Host", "h")], b"")
    assert len(conn.receive("GET", LIMIT).body) == LIMIT + 1
    conn.close()


def framed(rng: random.Random, n: int) -> tuple[bytes, bytes, int]:
    """A well-formed answer in a random framing, its body, and its status."""
    body = b"%d:" % n + bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 300, 5000])))
    status = rng.choice([200, 201, 404, 500])
    name = rng.choice([b"Content-Length", b"content-length", b"CONTENT-LENGTH"])
    head = b"HTTP/1.1 %d X\r\n" % status + b"X-N: %d\r\n" % n
    interim = rng.choice([b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Hints\r\nLink: <x>\r\n\r\n"])
    if rng.random() < 0.5:
        return interim + head + name + b":%s%d \r\n\r\n" % (b" " * rng.randrange(3), len(body)) + body, body, status
    chunks, rest = b"", body
    while rest:
        size = rng.randrange(1, len(rest) + 1)
        ext = rng.choice([b"", b";a=b", b" ;x"])
        chunks += b"%x%s\r\n" % (size, ext) + rest[:size] + b"\r\n"
        rest = rest[size:]
    trailer = rng.choice([b"", b"X-T: t\r\n"])
    coding = rng.choice([b"chunked", b"Chunked", b"gzip, chunked"])
    return (
        interim + head + b"Transfer-Encoding: " + coding + b"\r\n\r\n" + chunks + b"0\r\n" + trailer + b"\r\n",
        body,
        status,
    )


def test_many_answers_on_one_connection_in_random_framings_and_pieces_stay_in_step(server) -> None:
    # 300 answers in turn on one kept-alive connection, each framed at random (Content-Length
    # or chunks with extensions and trailers, after interim answers) and written in random
    # pieces: each request gets exactly its own body, and nothing is left over between them.
    rng = random.Random(15)
    answers = [framed(rng, n) for n in range(300)]

    def serve_all(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data, _, _ in answers:
            read_head(conn)
            while data:
                size = rng.choice([1, 7, 100, 4096, len(data)])
                conn.sendall(data[:size])
                data = data[size:]

    conn = server(serve_all)
    for n, (_, body, status) in enumerate(answers):
        assert not conn.stale()
        conn.send("GET", f"/{n}", [("Host", "h")], b"")
        answer = conn.receive("GET", LIMIT)
        assert (answer.status, answer.body, answer.will_close) == (status, body, False), n
        assert ("X-N", str(n)) in answer.headers
        assert not conn.buffer


def test_a_connection_numbered_past_selects_limit_is_still_kept_alive(server) -> None:
    # With concurrent_num in the hundreds (up to 1,000, and 2,048 open files in the sandbox) a
    # forwarding thread's connection may be descriptor 1024 or above, which select() cannot watch:
    # it was "stale" before every request, so each one opened a new connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:

        def two_then_close(conn: socket.socket) -> None:
            for body in (b"a", b"b"):
                read_head(conn)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + body)

        conn = server(two_then_close)
        assert conn.sock.fileno() >= 1024
        assert not conn.stale()
        conn.send("GET", "/", [("Host", "h")], b"")
        assert conn.receive("GET", LIMIT).body == b"a"
        assert not conn.stale()
        conn.send("GET", "/", [("Host", "h")], b"")
        assert conn.receive("GET", LIMIT).body == b"b"
        assert waits(conn)  # the server closed it: seen as before
        conn.close()
        assert conn.stale()
    finally:
        for fd in filler:
            os.close(fd)
