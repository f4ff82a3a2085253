"""An outsider's attacks on fgd's HTTP/1.1 server (fgd.web.server, fgd.web.connection).

Each test sends what a hostile client would, as raw bytes on loopback, to a real listener
with a small app, and asserts what the server answers and what the app saw. Holes found
this way and fixed are marked "was: ...".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import trio

from fgd.web.connection import MAX_HEAD
from fgd.web.server import lifespan
from tests.unit.test_http_server import LIMITS, Client, DirectEcho, echo, listen, post, request_id


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


class Recorder:
    """An app that answers 200 with a small body to everything and keeps the scopes it saw."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.scopes.append(scope)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})


# -- the request head --------------------------------------------------------------------------------


async def test_head_over_the_limit_sent_in_two_pieces_is_431(nursery: trio.Nursery) -> None:
    # was: h11 checks the limit only against a head it holds incomplete, so 16,000 bytes and then
    # 16,000 more (each under the limit) made a 32 KB head that was served
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 16_000)
    await trio.sleep(0.1)
    await client.send(b"b" * 16_000 + b"\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "FSS.0431"
    client.close()


async def test_head_over_the_limit_pipelined_behind_a_body_is_431(nursery: trio.Nursery) -> None:
    # was: a head read in one go with the end of the previous request's body (reads of 64 KB)
    # was never checked: a 60 KB head was served
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
    await trio.sleep(0.1)
    await client.send(b"{}" + b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 60_000 + b"\r\n\r\n")
    assert (await client.response())[0] == 200
    status, headers, _ = await client.response()
    assert status == 431 and headers["connection"] == "close"
    client.close()


@pytest.mark.parametrize("plain", [False, True], ids=["through-h11", "plain"])
async def test_head_of_exactly_the_limit_is_served_one_byte_more_is_431(nursery: trio.Nursery, plain: bool) -> None:
    # A plain request (fgd.web.plain: a POST with its length, for a direct route) is held to the
    # same limit as one h11 reads.
    app = DirectEcho()
    listener = await listen(nursery, app)
    start = (
        b"POST /direct/limit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        if plain
        else b"GET / HTTP/1.1\r\nHost: x\r\n"
    )
    for size, expected in ((MAX_HEAD, 200), (MAX_HEAD + 1, 431)):
        head = start + b"X-Padding: " + b"a" * (size - len(start) - 15) + b"\r\n\r\n"
        assert len(head) == size
        client = Client(listener.port)
        await client.send(head)
        status, _, body = await client.response()
        assert status == expected, size
        client.close()
    assert json.loads(body)["error_code"] == "FSS.0431"
    assert app.calls == ([("/direct/limit", b"", b"")] if plain else [])


# -- methods ---------------------------------------------------------------------------------------


async def test_lower_case_head_is_a_method_of_its_own_answered_whole(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # was: the method was upper-cased for the app ("HEAD", so no body was sent) while h11 framed
    # the answer for "head", a method like any other (methods are case-sensitive): the answer
    # never went out, the connection closed and each such request logged a traceback
    app = Recorder()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(b"head / HTTP/1.1\r\nHost: x\r\n\r\n" + b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await client.response()
    assert (status, body) == (200, b"hello")
    status, headers, body = await client.response(head_only=True)
    assert status == 200 and headers["content-length"] == "5"
    await client.send(post("/after", b""))
    assert (await client.response())[2] == b"hello"  # nothing of a body came after the HEAD answer
    client.close()
    assert [scope["method"] for scope in app.scopes] == ["head", "HEAD", "POST"]
    assert errors(caplog) == []


@pytest.mark.parametrize("target", [b"/", b"127.0.0.1:22"])
async def test_connect_is_refused_by_the_server_never_passed_to_the_app(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, target: bytes
) -> None:
    # was: CONNECT went to the app; when it answered 2xx (a gateway route for any method), h11
    # took the answer as the start of a tunnel and refused its body: the function ran, the client
    # got nothing and each such request logged a traceback
    app = Recorder()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 501 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "FSS.0501" and "CONNECT" in json.loads(body)["error_msg"]
    request_id(headers)
    assert await client.closed_within(2) is not None
    client.close()
    assert app.scopes == []
    assert errors(caplog) == []


# -- request targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"GET ?a HTTP/1.1",
        b"GET x HTTP/1.1",
        b"GET %2fx HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET http:x HTTP/1.1",
        b"GET ftp://h/x HTTP/1.1",
        b"GET http://h#x HTTP/1.1",
        b"OPTIONS *x HTTP/1.1",
    ],
)
async def test_request_target_that_is_not_a_path_is_400(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    # was: passed to the app as its path; Quart fails on an empty one ("GET ?a", a 500 with a
    # traceback) and on an absolute URL it cannot parse ("GET http://[::1")
    app = Recorder()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(line + b"\r\nHost: x\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "FSS.0400" and "request target" in json.loads(body)["error_msg"]
    client.close()
    assert app.scopes == []
    assert errors(caplog) == []


@pytest.mark.parametrize(
    ("line", "path", "query"),
    [
        (b"GET /a/b?c=d HTTP/1.1", "/a/b", b"c=d"),
        (b"GET http://h:1/p?q=1 HTTP/1.1", "/p", b"q=1"),
        (b"GET HTTPS://user@h HTTP/1.1", "/", b""),
        (b"GET http://h?q HTTP/1.1", "/", b"q"),
        (b"OPTIONS * HTTP/1.1", "*", b""),
    ],
)
async def test_absolute_form_reaches_the_app_as_its_path(
    nursery: trio.Nursery, line: bytes, path: str, query: bytes
) -> None:
    app = Recorder()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(line + b"\r\nHost: x\r\n\r\n")
    assert (await client.response())[0] == 200
    client.close()
    scope = app.scopes[0]
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (path, path.encode(), query)


# -- framing: request smuggling ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["length-then-chunked", "chunked-then-length", "two-hosts"],
)
async def test_ambiguous_request_is_400_and_what_follows_is_never_served(nursery: trio.Nursery, head: bytes) -> None:
    # was: served, and the connection kept: with Content-Length and Transfer-Encoding both, a
    # proxy in front that frames by the length sees one request where the daemon (by the
    # chunks) sees two, the second one smuggled past the proxy (RFC 9112 6.3: close at least);
    # two Host headers were served too (RFC 9112 3.2: 400)
    app = Recorder()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    await client.send(head + b"0\r\n\r\n" + smuggled)
    status, headers, _ = await client.response()
    assert status == 400 and headers["connection"] == "close"
    assert await client.closed_within(2) is not None
    client.close()
    assert app.scopes == []


# -- the connection cap --------------------------------------------------------------------------------


async def big_answers(scope: dict, receive: Callable, send: Callable) -> None:
    """Answers every request with 256 KB."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"262144")]})
    await send({"type": "http.response.body", "body": b"x" * 262144})


def non_reader(port: int) -> socket.socket:
    """A client that sends a request and never reads its answer (its receive window stays shut)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


async def test_full_listener_evicts_a_client_that_does_not_read_its_answer(nursery: trio.Nursery) -> None:
    # was: a connection writing to a client that reads nothing was not counted as waiting on its
    # client: a listener full of such clients made every new client wait send_timeout (30 s by
    # default) for a slot, and the attacker only had to reconnect as often
    limits = msgspec.structs.replace(LIMITS, max_connections=4, send_timeout=5.0)
    listener = await listen(nursery, big_answers, limits)
    stuck = [non_reader(listener.port) for _ in range(4)]
    await trio.sleep(0.3)  # each is now blocked writing its answer
    start = time.monotonic()
    client = Client(listener.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and len(body) == 262144
    assert time.monotonic() - start < 2
    client.close()
    for sock in stuck:
        sock.close()


# -- connections opened and dropped in every way -------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def reset(sock: trio.socket.SocketType) -> None:
    """Close with a reset (RST), as a client that crashes or is killed does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def drop(port: int, how: str) -> None:
    sock = trio.socket.socket()
    if how == "answer-reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    request = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
    if how == "close":
        sock.close()
    elif how == "reset":
        reset(sock)
    elif how == "half-head-reset":
        await sock.send(b"GET / HTTP/1.1\r\nHo")
        reset(sock)
    elif how == "request-reset":
        await sock.send(request)
        reset(sock)
    elif how == "request-close":
        await sock.send(request)
        sock.close()
    elif how == "body-reset":
        await sock.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        reset(sock)
    elif how == "half-close":
        await sock.send(request)
        sock.shutdown(socket.SHUT_WR)
        await sock.recv(1000)
        reset(sock)
    elif how == "answer-reset":
        await sock.send(request * 3)
        await sock.recv(1000)  # the answer has begun
        reset(sock)


async def test_thousands_of_connections_dropped_in_every_way_leave_no_descriptor_behind(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await listen(nursery, big_answers)
    before = open_fds()
    ways = ["close", "reset", "half-head-reset", "request-reset", "request-close", "body-reset", "half-close"]
    ways.append("answer-reset")
    for how in ways:
        for _ in range(250):
            await drop(listener.port, how)
    # Each closes at once, or within its linger (1 s) or header_timeout (0.5 s here).
    with trio.fail_after(5):
        while open_fds() > before:
            await trio.sleep(0.1)
    client = Client(listener.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response())[0] == 200
    client.close()
    assert errors(caplog) == []


# -- pipelining ---------------------------------------------------------------------------------------


async def test_a_thousand_requests_in_one_packet_are_answered_in_order(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"".join(f"GET /{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(1000)))
    paths = [json.loads((await client.response())[2])["path"] for _ in range(1000)]
    assert paths == [f"/{n}" for n in range(1000)]
    client.close()


async def test_client_that_pipelines_and_never_reads_is_not_read_ahead_of(nursery: trio.Nursery) -> None:
    """The server reads the next request only when an answer is out: a client that sends
    thousands and reads nothing gets a few served, then the connection goes at send_timeout."""
    served = 0

    async def counting(scope: dict, receive: Callable, send: Callable) -> None:
        nonlocal served
        if scope["type"] == "http":
            served += 1
        await big_answers(scope, receive, send)

    listener = await listen(nursery, counting)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", listener.port))
    sock.setblocking(False)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < 0.5:  # until the server's receive window is shut
        try:
            sent += sock.send(request)
        except BlockingIOError:
            await trio.sleep(0.01)
    assert sent // 30 > 20_000  # requests sent (all in the kernel's buffers, not the daemon's)
    assert served < 20
    # send_timeout (1 s here) ends it.
    await trio.sleep(1.5)
    sock.setblocking(True)
    sock.settimeout(2)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert received < served * 262144 + 4096


# -- shutdown ---------------------------------------------------------------------------------------


async def test_shutdown_is_not_held_by_a_client_that_reads_nothing_but_a_slow_reader_gets_its_answer(
    nursery: trio.Nursery,
) -> None:
    # was: a connection writing to a client that read nothing held shutdown for the whole
    # graceful_timeout (shutdown_grace, 10 s by default): 40 such clients on a daemon made each
    # SIGTERM take 10.6 s
    listener = await listen(nursery, big_answers, msgspec.structs.replace(LIMITS, send_timeout=30.0), grace=4.0)
    stuck = non_reader(listener.port)
    slow = non_reader(listener.port)
    await trio.sleep(0.3)  # both answers are blocked on their clients
    start = time.monotonic()
    listener.stop.set()

    def read_slowly() -> bytes:
        answer = b""
        while chunk := slow.recv(8192):
            answer += chunk
            time.sleep(0.03)
        return answer

    answer = await trio.to_thread.run_sync(read_slowly)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n" + b"x" * 262144)
    with trio.fail_after(3):
        await listener.stopped.wait()
    # The reader took about a second; the client that reads nothing was dropped 1 s after it
    # last took anything, not at the end of the grace.
    assert time.monotonic() - start < 3
    stuck.close()
    slow.close()


# -- chunked bodies ----------------------------------------------------------------------------------


async def test_body_of_one_byte_chunks_reaches_the_app_in_few_pieces(nursery: trio.Nursery) -> None:
    # was: one ASGI message per chunk; the invoke route and the gateway keep each piece until
    # the body is whole, so a body of 3 million one-byte chunks (under the gateway's 4 MB limit,
    # unauthenticated) held 83 MB in the daemon where the body budget counted 3 MB
    pieces: list[bytes] = []

    async def collect(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while True:
            message = await receive()
            pieces.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    listener = await listen(nursery, collect)
    client = Client(listener.port)
    await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"1\r\na\r\n" * 100_000 + b"0\r\n\r\n")
    assert (await client.response())[0] == 200
    client.close()
    assert b"".join(pieces) == b"a" * 100_000
    assert len(pieces) < 200  # about one per read from the socket


# -- the daemon's log ---------------------------------------------------------------------------------


async def test_a_path_with_an_encoded_line_break_cannot_forge_log_lines(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # was: the server's own error lines named the decoded path: "GET /x%0a<forged line>" wrote
    # a line of the client's choosing into the daemon's log whenever the app failed
    async def failing(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        raise RuntimeError("a bug in the app")

    listener = await listen(nursery, failing)
    client = Client(listener.port)
    await client.send(b"GET /x%0a2026-12-01%2000:00:00,000%20ERROR%20fgd:%20forged HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response())[0] == 500
    client.close()
    logged = errors(caplog)
    assert logged and all("\n" not in line and "\r" not in line for line in logged), logged
    assert "/x%0a2026" in logged[0]


# -- guarantees kept (each passed when written; pinned so they stay) ------------------------------------


async def test_pipelined_requests_then_half_close_are_all_answered_then_closed(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"".join(post(f"/{n}", b"x") for n in range(3)))
    client.sock.shutdown(socket.SHUT_WR)
    paths = [json.loads((await client.response())[2])["path"] for _ in range(3)]
    assert paths == ["/0", "/1", "/2"]
    assert await client.closed_within(1) is not None
    client.close()


async def test_expect_100_continue_with_the_body_sent_at_once_and_a_request_behind_it(
    nursery: trio.Nursery,
) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(post("/first", b"body", "Expect: 100-continue\r\n") + post("/second", b""))
    answers = []
    while len(answers) < 2:
        status, _, body = await client.response()
        if status != 100:  # a 100 Continue may come first; nothing else may
            answers.append((status, json.loads(body)["path"], json.loads(body)["body"]))
    assert answers == [(200, "/first", "body"), (200, "/second", "")]
    client.close()


async def test_http_1_0_keep_alive_is_answered_once_and_closed(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /two HTTP/1.0\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/one"
    assert headers["connection"].lower() == "close"
    assert await client.closed_within(1.5) is not None
    client.close()
