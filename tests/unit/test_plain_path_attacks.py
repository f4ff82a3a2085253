"""Attacks on the plain path (fgd.web.plain read by fgd.web.connection without h11), raw bytes on
loopback against the unit listener with a direct route.

The claim under attack: a plain request is read and answered as h11 would read and answer it,
and what follows it goes through h11. So the same bytes, sent with the plain path on and with it
off (every request through h11), must give the same answers, the same calls of the direct
route, and the same end of the connection.
"""

from __future__ import annotations

import socket
import time

import pytest
import trio

from fgd.web import connection
from fgd.web.connection import Respond
from fgd.web.plain import plain_request
from tests.unit.test_http_server import DirectEcho, listen, normalised, post


def exchange(port: int, pieces: list[bytes], pause: float = 0.02) -> bytes:
    """Send `pieces` (a pause between them, so each is its own read), half-close, and return
    everything the server sends until it closes (a reset is marked, not raised)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for n, piece in enumerate(pieces):
            if n:
                time.sleep(pause)
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server already answered and closed: what it sent is still read below
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        out += b"<reset>"
    finally:
        sock.close()
    return out


async def both_ways(
    monkeypatch: pytest.MonkeyPatch, app: DirectEcho, port: int, pieces: list[bytes]
) -> list[tuple[bytes, list]]:
    """What the server sends and what the direct route was called with, for `pieces` sent with
    the plain path on, then off (every request read by h11)."""
    seen = []
    for reader in (plain_request, lambda data, max_head: None):
        monkeypatch.setattr(connection, "plain_request", reader)
        app.calls.clear()
        answer = await trio.to_thread.run_sync(exchange, port, pieces)
        seen.append((normalised(answer), [(path, query, bytes(body)) for path, query, body in app.calls]))
    return seen


class Closing(DirectEcho):
    """A direct route whose answer says `Connection: close`."""

    async def answer(self, path: str, query: bytes, headers: list, body: bytes, respond: Respond) -> None:
        self.calls.append((path, query, body))
        await respond(200, [(b"Connection", b"Keep-Alive, Close"), (b"content-length", b"2")], b"ok")


async def test_a_direct_answer_that_says_close_ends_the_connection_as_h11_would(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # h11 closes after an answer whose Connection header holds "close" (its request may have been
    # plain): the pipelined request behind it is not served. A client told "close" takes it as not
    # served and may send it again: served anyway, a POST (an invocation) would run twice.
    app = Closing()
    listener = await listen(nursery, app)
    plain, through_h11 = await both_ways(
        monkeypatch, app, listener.port, [post("/direct/a", b"x") + post("/direct/b", b"y")]
    )
    assert through_h11[1] == [("/direct/a", b"", b"x")]
    assert plain == through_h11
    assert plain[0].count(b"HTTP/1.1 200") == 1
