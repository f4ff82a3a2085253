"""fgd.web.server on a loopback socket: the response check and the per-connection error boundary."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import h11
import pytest
import trio

from fgd.config import ServerConfig
from fgd.web.connection import Connection
from fgd.web.gateway import to_http
from fgd.web.server import header_text, lifespan, serve_http

LIMITS = ServerConfig(header_timeout=2.0, body_timeout=2.0, keep_alive_timeout=2.0, send_timeout=2.0)


def responder(status: object, headers: list) -> Callable:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"from the app"})

    return app


async def serving(app: Callable, nursery: trio.Nursery) -> int:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = trio.Event()
    nursery.start_soon(lambda: serve_http(app, sock, LIMITS, graceful_timeout=1, shutdown_trigger=stop.wait))
    await trio.sleep(0.1)
    return port


async def get(port: int) -> tuple[int, dict, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")])))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    status, headers, body = 0, {}, b""
    with trio.fail_after(5):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    await stream.aclose()
    return status, headers, body


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (101, []),
        (100, []),
        (600, []),
        ("200", []),
        (True, []),
        (200, [(b"x-a", b"one\r\nx-injected: 1")]),
        (200, [(b"x-a", b"nul\x00")]),
        (200, [(b"x-a", b"soh\x01")]),
        (200, [(b"x-a", b"del\x7f")]),
        (200, [(b"x-a", b"vt\x0bx")]),
        (200, [(b"x-a", b" leading space")]),
        (200, [(b"content-length", b"12"), (b"content-length", b"13")]),
        (200, [(b"content-length", b"twelve")]),
        (200, [(b"transfer-encoding", b"gzip")]),
        (200, [(b"bad name", b"1")]),
        (200, [(b"x-a", "text, not bytes")]),
    ],
)
async def test_an_invalid_response_becomes_a_500_and_the_listener_goes_on(
    nursery: trio.Nursery, status: object, headers: list
) -> None:
    port = await serving(responder(status, headers), nursery)
    for _ in range(2):
        code, sent, body = await get(port)
        assert code == 500
        assert b"invalid HTTP response" in body
        assert b"x-injected" not in sent


async def test_a_connection_that_fails_inside_the_server_ends_alone(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failures = []
    original = Connection._next_request

    async def broken_once(self: Connection) -> object:
        if not failures:
            failures.append(self)
            raise RuntimeError("a bug in the connection's bookkeeping")
        return await original(self)

    monkeypatch.setattr(Connection, "_next_request", broken_once)
    port = await serving(responder(200, [(b"content-type", b"text/plain")]), nursery)
    try:
        first = (await get(port))[0]
    except (trio.BrokenResourceError, h11.RemoteProtocolError, OSError):
        first = None
    assert failures and first in (None, 0)  # that connection closed without an answer
    assert (await get(port))[0] == 200
    assert (await get(port))[0] == 200
    logged = [r for r in caplog.records if r.name == "fgd.http" and r.exc_info]
    assert logged and "a bug in the connection's bookkeeping" in str(logged[0].exc_info[1])


def test_header_text_keeps_printable_ascii_only() -> None:
    assert header_text("Runtime.ExitError") == b"Runtime.ExitError"
    assert header_text("a\r\nb\x00c\td\x7fe\u00e9") == b"a??b?c?d?e?"


def test_gateway_result_nested_too_deeply_is_refused() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        to_http(b'{"statusCode": 200, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
