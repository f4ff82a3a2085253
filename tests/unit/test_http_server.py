"""fgd's HTTP/1.1 server (fgd.web.server, fgd.web.connection) on a loopback socket, with small apps.

Each guarantee of the listener, driven with raw bytes where an HTTP client library would
not send the attack: pipelining, 100-continue, chunked bodies, malformed and oversized heads,
slow heads and bodies, unread bodies, failing apps, and a graceful drain on shutdown.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import trio

from fgd.config import ServerConfig
from fgd.web.connection import MAX_HEAD, DirectHandler, Respond
from fgd.web.plain import plain_request
from fgd.web.server import lifespan, serve_http

LIMITS = ServerConfig(header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=1.0, send_timeout=1.0)


async def echo(scope: dict, receive: Callable, send: Callable) -> None:
    """Answers with the method, path and the whole body it read (as JSON)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = b""
    pieces = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        pieces += 1
        if not message["more_body"]:
            break
    answer = json.dumps({"method": scope["method"], "path": scope["path"], "body": body.decode()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def refuse_unread(scope: dict, receive: Callable, send: Callable) -> None:
    """Answers 401 without reading the body (as a refused token would)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] != "/refuse":
        await echo(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


class Listener:
    def __init__(self, port: int, stop: trio.Event, stopped: trio.Event) -> None:
        self.port = port
        self.stop = stop
        self.stopped = stopped


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def listen(nursery: trio.Nursery, app: Callable, limits: ServerConfig = LIMITS, grace: float = 2.0) -> Listener:
    sock = socket.create_server(("127.0.0.1", 0))
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_http(
                app, sock, limits, graceful_timeout=grace, shutdown_trigger=stop.wait, task_status=task_status
            )
        finally:
            stopped.set()

    listener = Listener(sock.getsockname()[1], stop, stopped)
    await nursery.start(run)
    return listener


class Client:
    """A raw socket client (blocking calls run in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await trio.to_thread.run_sync(self.sock.sendall, data)

    async def _recv(self) -> bytes:
        return await trio.to_thread.run_sync(self.sock.recv, 65536)

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response (status, headers, body by Content-Length unless `head_only`)."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self._recv()
            if not chunk:
                raise ConnectionError(f"closed before a whole head: {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        length = 0 if status < 200 or head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = await self._recv()
            if not chunk:
                raise ConnectionError("closed in the body")
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    async def closed_within(self, seconds: float) -> float | None:
        """Seconds until the server closed the connection (discarding what it sent), or None."""
        start = time.monotonic()
        self.sock.settimeout(0.05)
        try:
            while time.monotonic() - start < seconds:
                try:
                    if await self._recv() == b"":
                        return time.monotonic() - start
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    return time.monotonic() - start
            return None
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def request_id(headers: dict[str, str]) -> str:
    return str(uuid.UUID(headers["x-request-id"]))


# -- keep-alive and pipelining -------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_on_one_connection(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    requests = [post(f"/r{n}", f"body {n}".encode()) for n in range(20)]
    requests.insert(5, b"GET /get HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.send(b"".join(requests))  # all in one write
    answers = [await client.response() for _ in requests]
    paths = [json.loads(body)["path"] for _, _, body in answers]
    assert paths == [f"/r{n}" for n in range(5)] + ["/get"] + [f"/r{n}" for n in range(5, 20)]
    assert [json.loads(body)["body"] for _, _, body in answers][:2] == ["body 0", "body 1"]
    assert len({request_id(headers) for _, headers, _ in answers}) == len(requests)
    # Still open for more.
    await client.send(post("/after", b"x"))
    assert json.loads((await client.response())[2])["path"] == "/after"
    client.close()


async def test_idle_keep_alive_connection_closes_after_keep_alive_timeout(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(post("/", b""))
    assert (await client.response())[0] == 200
    elapsed = await client.closed_within(3)
    assert elapsed is not None and 0.7 < elapsed < 1.8, elapsed
    client.close()


async def test_head_answer_has_no_body_and_the_next_request_follows(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await client.response(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0
    # No body after the HEAD answer's head: the next bytes are the GET's answer.
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["path"] == "/g"
    client.close()


# -- bodies ----------------------------------------------------------------------------------------


async def test_chunked_body_is_read_whole(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    head = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    await client.send(head + b"5\r\nhello\r\n")
    await trio.sleep(0.1)
    await client.send(b"6\r\n world\r\n0\r\n\r\n")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "hello world"
    client.close()


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, refuse_unread)
    client = Client(listener.port)
    await client.send(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    status, _, _ = await client.response()
    assert status == 100
    await client.send(b"ping")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "ping"
    client.close()


async def test_expect_100_continue_refused_from_its_head_gets_no_100_and_a_close(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, refuse_unread)
    client = Client(listener.port)
    await client.send(b"POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 401 and body == b"no"
    assert headers["connection"] == "close"
    assert await client.closed_within(2) is not None
    client.close()


async def test_unread_body_is_dropped_and_the_connection_carries_the_next_request(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, refuse_unread)
    client = Client(listener.port)
    body = b"x" * 100_000
    await client.send(post("/refuse", body) + post("/next", b"y"))
    status, headers, _ = await client.response()
    assert status == 401 and "connection" not in headers
    status, _, answer = await client.response()
    assert status == 200 and json.loads(answer) == {"method": "POST", "path": "/next", "body": "y"}
    client.close()


async def test_body_too_large_to_drop_is_answered_with_connection_close(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, refuse_unread)
    client = Client(listener.port)
    await client.send(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    status, headers, _ = await client.response()
    assert status == 401 and headers["connection"] == "close"
    assert await client.closed_within(3) is not None
    client.close()


@pytest.mark.parametrize("sent", [b"", b'{"a": 1'], ids=["no-body", "part-of-body"])
async def test_stalled_body_is_408_with_a_request_id_and_closed(nursery: trio.Nursery, sent: bytes) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    start = time.monotonic()
    await client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + sent)
    status, headers, body = await client.response()
    assert 0.4 < time.monotonic() - start < 1.5
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "FSS.0408" and "stalled" in json.loads(body)["error_msg"]
    request_id(headers)
    assert await client.closed_within(2) is not None
    client.close()


async def test_body_dripped_slowly_is_accepted_while_each_pause_is_short(nursery: trio.Nursery) -> None:
    """body_timeout bounds each pause, not the whole body: a slow upload that keeps coming is served."""
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(b"POST /drip HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"12345678":
        await trio.sleep(0.2)
        await client.send(bytes([byte]))
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "12345678"
    client.close()


# -- heads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /x?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /x HTTP/9\r\nHost: x\r\n\r\n",
        b"NOT A REQUEST\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: one\x00two\r\n\r\n",
        b"GET /x HTTP/1.1\r\n Host: x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "space-in-name",
        "non-ascii-target",
        "bad-version",
        "not-http",
        "nul-in-value",
        "folded-header",
        "two-lengths",
        "negative-length",
        "bad-chunk-size",
        "no-host",
    ],
)
async def test_malformed_request_is_400_with_a_reason_and_a_request_id_then_closed(
    nursery: trio.Nursery, sent: bytes
) -> None:
    listener = await listen(nursery, refuse_unread)
    client = Client(listener.port)
    await client.send(sent)
    status, headers, body = await client.response()
    assert status == 400 and headers["connection"] == "close"
    error = json.loads(body)
    assert error["error_code"] == "FSS.0400" and error["error_msg"].startswith("malformed HTTP/1.1 request")
    request_id(headers)
    assert await client.closed_within(2) is not None
    client.close()
    # The listener goes on.
    other = Client(listener.port)
    await other.send(post("/fine", b""))
    assert (await other.response())[0] == 200
    other.close()


@pytest.mark.parametrize("where", ["target", "headers"])
async def test_head_over_the_limit_is_431_and_closed(nursery: trio.Nursery, where: str) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    padding = "a" * (MAX_HEAD + 10)
    if where == "target":
        sent = f"GET /{padding} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    else:
        sent = f"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\n\r\n".encode()
    await client.send(sent)
    status, headers, body = await client.response()
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "FSS.0431"
    request_id(headers)
    client.close()


async def test_head_just_under_the_limit_is_served(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    padding = "a" * (MAX_HEAD - 200)
    await client.send(f"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\n\r\n".encode())
    assert (await client.response())[0] == 200
    client.close()


@pytest.mark.parametrize("sent", [b"", b"GET /slow HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half-a-head"])
async def test_slow_head_is_dropped_after_header_timeout(nursery: trio.Nursery, sent: bytes) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(sent)
    elapsed = await client.closed_within(3)
    assert elapsed is not None and 0.3 < elapsed < 1.2, elapsed
    client.close()


async def test_head_dripped_byte_by_byte_is_dropped_at_its_deadline(nursery: trio.Nursery) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    start = time.monotonic()
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30:
            await client.send(bytes([byte]))
            await trio.sleep(0.05)
    except OSError:
        pass
    assert await client.closed_within(2) is not None
    assert time.monotonic() - start < 1.3
    client.close()


async def test_kept_alive_connection_gets_header_timeout_from_its_next_heads_first_byte(
    nursery: trio.Nursery,
) -> None:
    listener = await listen(nursery, echo)
    client = Client(listener.port)
    await client.send(post("/", b""))
    assert (await client.response())[0] == 200
    await client.send(b"GET / HTTP/1.1\r\n")  # keep_alive_timeout is 1 s; header_timeout 0.5 s
    elapsed = await client.closed_within(3)
    assert elapsed is not None and 0.3 < elapsed < 0.9, elapsed
    client.close()


# -- answers -------------------------------------------------------------------------------------


async def test_app_that_fails_before_answering_is_500_and_the_connection_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["path"] == "/fail":
            raise RuntimeError("a bug in the app")
        if scope["path"] == "/silent":
            return
        await echo(scope, receive, send)

    listener = await listen(nursery, failing)
    for path in ("/fail", "/silent"):
        client = Client(listener.port)
        await client.send(post(path, b"") + post("/fine", b""))
        status, headers, body = await client.response()
        assert status == 500 and json.loads(body)["error_code"] == "FSS.0500"
        request_id(headers)
        client.close()
        other = Client(listener.port)
        await other.send(post("/fine", b""))
        assert (await other.response())[0] == 200
        other.close()
    assert any("a bug in the app" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_answer_the_client_does_not_read_is_dropped_after_send_timeout(nursery: trio.Nursery) -> None:
    sent = trio.Event()
    big = b"x" * 5_000_000

    async def large(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5000000")]})
        await send({"type": "http.response.body", "body": big})
        sent.set()

    listener = await listen(nursery, large)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", listener.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    start = time.monotonic()
    with trio.fail_after(5):
        await sent.wait()
    # The app's send returned when the connection gave up on the client: send_timeout (1 s).
    assert 0.8 < time.monotonic() - start < 2.5
    received = 0
    sock.settimeout(2)
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert received < len(big)


async def test_one_request_id_the_cff_one_when_the_answer_has_it(nursery: trio.Nursery) -> None:
    async def stamped(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        headers = [(b"X-Request-Id", b"from-the-app"), (b"content-length", b"0")]
        if scope["path"] == "/cff":
            headers.append((b"x-cff-request-id", b"cff-id"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    listener = await listen(nursery, stamped)
    client = Client(listener.port)
    await client.send(b"GET /cff HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.response()
    await client.response()
    client.close()
    raw = Client(listener.port)
    await raw.send(b"GET /cff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := await raw._recv():
        answer += chunk
    raw.close()
    ids = [line for line in answer.lower().split(b"\r\n") if line.startswith(b"x-request-id:")]
    assert ids == [b"x-request-id: cff-id"]


# -- direct routes (the sync invoke's, fgd.web.front) ----------------------------------------------


class DirectEcho:
    """`echo` through ASGI, and POST /direct/... answered directly when its body came whole."""

    def __init__(self, awaits: bool = True) -> None:
        self.calls: list[tuple[str, bytes, bytes]] = []
        self.awaits = awaits  # False: answers without a single await (as a refusal does)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await echo(scope, receive, send)

    def direct(self, method: str, path: str) -> DirectHandler | None:
        if method != "POST" or not path.startswith("/direct"):
            return None
        return self.answer

    async def answer(
        self, path: str, raw_path: bytes, query: bytes, headers: list, body: bytes, respond: Respond
    ) -> None:
        self.calls.append((path, query, body))
        if self.awaits:
            await trio.lowlevel.checkpoint()
        if path == "/direct/fail":
            raise RuntimeError("a bug in a direct route")
        if path == "/direct/silent":
            return  # a bug too: no answer
        if path == "/direct/bad-header":
            await respond(200, [(b"x-bad", b"line\r\nbreak"), (b"content-length", b"0")], b"")
            return
        answer = json.dumps({"via": "direct", "path": path, "body": body.decode()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await respond(200, headers, answer)


async def test_a_body_that_came_whole_is_answered_directly_one_that_streams_through_the_app(
    nursery: trio.Nursery,
) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    # Pipelined: each whole, answered in order by the direct route, the GET by the app.
    requests = [post(f"/direct/{n}?q={n}", f"event {n}".encode()) for n in range(5)]
    requests.insert(2, b"GET /direct/get HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.send(b"".join(requests))
    answers = [json.loads((await client.response())[2]) for _ in requests]
    assert [a.get("via", "app") for a in answers] == ["direct", "direct", "app", "direct", "direct", "direct"]
    assert [a["body"] for a in answers if a.get("via")] == [f"event {n}" for n in range(5)]
    assert app.calls[0] == ("/direct/0", b"q=0", b"event 0")
    # A body still on its way when the head is read goes through the app, as before.
    await client.send(post("/direct/slow", b"0123456789")[:-5])
    await trio.sleep(0.1)
    await client.send(b"56789")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body) == {"method": "POST", "path": "/direct/slow", "body": "0123456789"}
    client.close()


async def test_a_direct_route_that_fails_is_500_and_the_listener_goes_on(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await listen(nursery, DirectEcho())
    for path in ("/direct/fail", "/direct/silent", "/direct/bad-header"):
        client = Client(listener.port)
        await client.send(post(path, b"x"))
        status, headers, body = await client.response()
        assert status == 500 and json.loads(body)["error_code"] == "FSS.0500"
        assert "x-bad" not in headers
        request_id(headers)
        client.close()
        other = Client(listener.port)
        await other.send(post("/direct/fine", b"y"))
        status, _, body = await other.response()
        assert status == 200 and json.loads(body)["via"] == "direct"
        other.close()
    assert any("a bug in a direct route" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert any("invalid response" in r.getMessage() for r in caplog.records)


async def pipelined_burst(nursery: trio.Nursery, count: int) -> tuple[int, list[int]]:
    """`count` requests answered without a wait (a direct route that awaits nothing, as refusals
    are) sent in one burst on one connection: how many the app took, and how many it had taken
    at each turn another task got while they were served."""
    app = DirectEcho(awaits=False)
    listener = await listen(nursery, app)
    burst = b"".join(post(f"/direct/{n}", b"") for n in range(count))
    client = Client(listener.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    turns: list[int] = []

    async def watch() -> None:
        while len(app.calls) < count:
            turns.append(len(app.calls))
            await trio.sleep(0)

    async def read_all() -> None:
        for _ in range(count):
            assert (await client.response())[0] == 200

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        inner.start_soon(read_all)
        await client.send(burst)
    client.close()
    return len(app.calls), turns


async def test_a_client_pipelining_requests_answered_at_once_does_not_keep_the_event_loop(
    nursery: trio.Nursery,
) -> None:
    """Requests answered without a wait (refusals, a direct route that awaits nothing) and always
    in already: the connection still lets the other tasks run after each read of them."""
    count = 3000
    calls, turns = await pipelined_burst(nursery, count)
    assert calls == count
    seen_mid_burst = sum(1 for taken in turns if taken)
    assert seen_mid_burst >= 3, seen_mid_burst


async def test_other_tasks_run_between_any_two_pipelined_requests_not_only_after_a_read(
    nursery: trio.Nursery,
) -> None:
    """A read holds hundreds of small pipelined requests: each one taken from what was read lets
    the other tasks run before it is served, as a read does."""
    count = 3000
    calls, turns = await pipelined_burst(nursery, count)
    assert calls == count
    # How many requests were served between two turns of another task, at most.
    longest = max(after - before for before, after in zip([0, *turns[:-1]], turns, strict=True))
    assert longest <= 2, longest


def normalised(answer: bytes) -> bytes:
    """An answer with its request id and date (which differ between two answers) blanked."""
    lines = [
        line.split(b":")[0] + b": -" if line.lower().startswith((b"x-request-id:", b"date:")) else line
        for line in answer.split(b"\r\n")
    ]
    return b"\r\n".join(lines)


async def raw_answer(port: int, data: bytes) -> bytes:
    """Everything the server sends for `data` (a request that asks for a close) until it closes."""
    client = Client(port)
    await client.send(data)
    answer = b""
    while chunk := await client._recv():
        answer += chunk
    client.close()
    return answer


async def test_a_plain_request_skips_h11_and_its_answer_is_the_bytes_h11_would_write(
    nursery: trio.Nursery, plain_targets: list[bytes]
) -> None:
    """A plain request (fgd.web.plain) is read and answered without h11; the same request in a
    shape h11 must read (a Connection header) reaches the same direct route through h11; the
    answers are the same bytes."""
    app = DirectEcho()
    listener = await listen(nursery, app)
    listener_stop = listener.stop
    # Each answer is followed by the close the second request asks for, so each is read whole.
    close = b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    plain = await raw_answer(listener.port, post("/direct/a?b=1", b"event") + close)
    through_h11 = await raw_answer(listener.port, post("/direct/a?b=1", b"event", "Connection: keep-alive\r\n") + close)
    assert plain_targets == [b"/direct/a?b=1"]  # the second went through h11
    assert app.calls == [("/direct/a", b"b=1", b"event")] * 2
    assert plain.startswith(b"HTTP/1.1 200 \r\ncontent-type: application/json\r\n")
    assert normalised(plain) == normalised(through_h11)
    assert plain.count(b"x-request-id:") == 2 and plain.count(b"date:") == 2
    listener_stop.set()


async def test_plain_and_h11_requests_pipelined_in_any_order_are_answered_in_order(nursery: trio.Nursery) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    shapes = [
        post("/direct/0", b"plain"),
        post("/direct/1", b"h11", "Connection: keep-alive\r\n"),
        post("/direct/2", b"plain"),
        b"POST /direct/3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n",
        post("/direct/4", b"plain"),
        post("/other/5", b"app"),
        post("/direct/6", b"plain"),
    ]
    for burst in (b"".join(shapes), *shapes):  # all in one packet, then one at a time
        await client.send(burst)
        for _ in range(len(shapes) if len(burst) > len(shapes[0]) * 2 else 1):
            assert (await client.response())[0] == 200
    paths = [call[0] for call in app.calls]
    assert paths == ["/direct/0", "/direct/1", "/direct/2", "/direct/3", "/direct/4", "/direct/6"] * 2
    assert [call[2] for call in app.calls][:6] == [b"plain", b"h11", b"plain", b"chunk", b"plain", b"plain"]
    client.close()


async def test_a_plain_request_whose_route_fails_is_500_and_the_connection_closes_as_it_says(
    nursery: trio.Nursery,
) -> None:
    listener = await listen(nursery, DirectEcho())
    for path in ("/direct/fail", "/direct/silent", "/direct/bad-header"):
        client = Client(listener.port)
        # A second request behind it is not served: the 500 says the connection closes.
        await client.send(post(path, b"x") + post("/direct/next", b"y"))
        status, headers, _ = await client.response()
        assert status == 500 and headers["connection"] == "close"
        assert client.buffer == b""
        assert await client.closed_within(1) is not None, path
        client.close()


@pytest.fixture
def plain_targets(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The targets of the requests read without h11."""
    from fgd.web import connection

    taken: list[bytes] = []

    def spy(data: bytes, max_head: int) -> object:
        request = plain_request(data, max_head)
        if request is not None and request.body is not None:
            taken.append(request.target)
        return request

    monkeypatch.setattr(connection, "plain_request", spy)
    return taken


async def test_a_plain_head_whose_body_is_not_all_in_goes_through_h11_and_the_app(
    nursery: trio.Nursery, plain_targets: list[bytes]
) -> None:
    """So a request can be refused from its head before its body is sent (some clients wait for
    that answer before they send the body); the app reads the body as it comes."""
    app = DirectEcho()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(b"POST /direct/pieces HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
    await trio.sleep(0.05)
    await client.send(b"cdef")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body) == {"method": "POST", "path": "/direct/pieces", "body": "abcdef"}
    assert plain_targets == [] and app.calls == []
    client.close()


async def test_a_plain_request_answered_during_shutdown_is_closed_at_once_not_lingered_on(
    nursery: trio.Nursery,
) -> None:
    """Its request was read whole: nothing of it is left to take before the close."""
    entered = trio.Event()
    release = trio.Event()

    class Held(DirectEcho):
        async def answer(
            self, path: str, raw_path: bytes, query: bytes, headers: list, body: bytes, respond: Respond
        ) -> None:
            entered.set()
            await release.wait()
            await super().answer(path, raw_path, query, headers, body, respond)

    listener = await listen(nursery, Held())
    client = Client(listener.port)
    await client.send(post("/direct/held", b"x"))
    with trio.fail_after(2):
        await entered.wait()
    listener.stop.set()
    await trio.sleep(0.1)
    release.set()
    released = time.monotonic()
    status, headers, body = await client.response()
    assert status == 200 and headers["connection"] == "close" and json.loads(body)["via"] == "direct"
    assert await client.closed_within(2) is not None
    with trio.fail_after(2):
        await listener.stopped.wait()
    # A close that lingered (LINGER_SECONDS) would have held the listener's stop for a second.
    assert time.monotonic() - released < 0.5
    client.close()


# -- shutdown --------------------------------------------------------------------------------------


async def test_shutdown_finishes_the_request_in_flight_and_closes_the_rest(nursery: trio.Nursery) -> None:
    running = trio.Event()
    release = trio.Event()

    async def slow(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["path"] == "/slow":
            running.set()
            await release.wait()
        await echo(scope, receive, send)

    listener = await listen(nursery, slow)
    busy = Client(listener.port)
    await busy.send(post("/slow", b"") + post("/after", b""))  # a pipelined second request
    idle = Client(listener.port)
    await idle.send(post("/", b""))
    assert (await idle.response())[0] == 200
    head = Client(listener.port)
    await head.send(b"GET / HTTP/1.1\r\n")
    stalled = Client(listener.port)
    await stalled.send(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    with trio.fail_after(2):
        await running.wait()
    await trio.sleep(0.1)
    listener.stop.set()
    # Whoever waits on a client goes at once; the stalled body is told why.
    assert await idle.closed_within(0.5) is not None
    assert await head.closed_within(0.5) is not None
    status, _, body = await stalled.response()
    assert status == 408 and b"shutting down" in body
    # No new connections.
    await trio.sleep(0.1)
    with pytest.raises(OSError):
        Client(listener.port).sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
    # The request in flight is answered, with Connection: close; the pipelined one is not served.
    release.set()
    status, headers, body = await busy.response()
    assert status == 200 and json.loads(body)["path"] == "/slow"
    assert headers["connection"] == "close"
    assert await busy.closed_within(1) is not None
    with trio.fail_after(2):
        await listener.stopped.wait()
    for client in (busy, idle, head, stalled):
        client.close()


async def test_shutdown_does_not_wait_past_graceful_timeout(nursery: trio.Nursery) -> None:
    async def stuck(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await trio.sleep_forever()

    listener = await listen(nursery, stuck, grace=0.5)
    client = Client(listener.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.1)
    start = time.monotonic()
    listener.stop.set()
    with trio.fail_after(3):
        await listener.stopped.wait()
    assert 0.4 < time.monotonic() - start < 1.5
    assert await client.closed_within(1) is not None
    client.close()


async def test_lifespan_startup_and_shutdown_reach_the_app(nursery: trio.Nursery) -> None:
    seen: list[str] = []

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await echo(scope, receive, send)

    listener = await listen(nursery, app)
    assert seen == ["lifespan.startup"]
    listener.stop.set()
    with trio.fail_after(2):
        await listener.stopped.wait()
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize("answers", [True, False], ids=["app-answers", "app-stops"])
async def test_body_cut_short_by_the_client_is_a_disconnect_for_the_app(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, answers: bool
) -> None:
    seen: list[dict] = []

    async def reader(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect":
                break
        if answers:  # as front.py does: the request is refused, never acted on
            await send({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"3")]})
            await send({"type": "http.response.body", "body": b"cut"})

    listener = await listen(nursery, reader)
    client = Client(listener.port)
    await client.send(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await trio.sleep(0.1)
    client.sock.shutdown(socket.SHUT_WR)
    if answers:
        status, _, body = await client.response()  # a half-closed client still reads its answer
        assert status == 400 and body == b"cut"
    assert await client.closed_within(2) is not None
    client.close()
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]
    assert seen[0]["body"] == b"0123456789" and seen[0]["more_body"] is True
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
