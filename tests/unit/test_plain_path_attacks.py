"""Attacks on the plain path (fgd.web.plain read by fgd.web.connection without h11), raw bytes on
loopback against the unit listener with a direct route.

The claim under attack: a plain request is read and answered as h11 would read and answer it,
and what follows it goes through h11. So the same bytes, sent with the plain path on and with it
off (every request through h11), must give the same answers, the same calls of the direct
route, and the same end of the connection.
"""

from __future__ import annotations

import json
import random
import socket
import time

import msgspec
import pytest
import trio

from fgd.web import connection
from fgd.web.connection import Respond
from fgd.web.plain import plain_request
from tests.unit.test_http_server import LIMITS, Client, DirectEcho, listen, normalised, post, request_id
from tests.unit.test_plain_request import ALPHABET, assert_as_h11_reads, mutations


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

    async def answer(
        self, path: str, raw_path: bytes, query: bytes, headers: list, body: bytes, respond: Respond
    ) -> None:
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


def stream(rng: random.Random) -> tuple[bytes, list[int]]:
    """A hostile byte stream: pipelined requests (plain ones first, then of every other shape),
    mutated, and cut into reads at random places."""
    plain = [
        post("/direct/a?q=1", b'{"n": 1}'),
        b"POST /direct/b HTTP/1.1\r\nhost:h\r\ncontent-length:3\r\nX-A: \t v \t\r\n\r\nabc",
        post("/direct/c", b""),
    ]
    other = [
        post("/direct/d", b"zz", "Expect: 100-continue\r\n"),
        post("/direct/e", b"zz", "Connection: close\r\n"),
        b"POST /direct/f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
        b"POST /direct/g HTTP/1.0\r\nContent-Length: 1\r\n\r\nz",
        b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n",
        post("/direct/h", b"z", "Content-Length: 1\r\n"),
    ]
    data = b"".join(rng.sample(plain, rng.randint(1, 3)) + rng.sample(other, rng.randint(0, 2)))
    data = mutations(rng, data)
    cuts = sorted(rng.sample(range(1, len(data)), rng.choice([0, 0, 1, 2])))
    return data, cuts


async def test_hostile_streams_are_answered_the_same_with_the_plain_path_on_and_off(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    rng = random.Random(1515)
    plain_taken = 0
    for _ in range(100):
        data, cuts = stream(rng)
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        plain, through_h11 = await both_ways(monkeypatch, app, listener.port, pieces)
        assert plain == through_h11, (data, cuts)
        plain_taken += plain_request(pieces[0], connection.MAX_HEAD) is not None
    assert plain_taken > 10  # the plain path was taken, not only refused


async def test_a_plain_request_then_a_malformed_one_is_200_then_400_and_closed(nursery: trio.Nursery) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(post("/direct/a", b"x") + b"POST /direct/b HTTP/1.1\r\nHost: x\r\nX-Bad : a\r\n\r\n")
    first = await client.response()
    second = await client.response()
    assert first[0] == 200 and json.loads(first[2])["via"] == "direct"
    assert second[0] == 400 and second[1]["connection"] == "close"
    assert json.loads(second[2])["error_code"] == "FSS.0400"
    assert request_id(first[1]) != request_id(second[1])
    assert await client.closed_within(1) is not None
    assert [call[0] for call in app.calls] == ["/direct/a"]
    client.close()


async def test_a_plain_request_then_part_of_a_head_then_a_half_close_is_200_then_400(nursery: trio.Nursery) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    answer = await trio.to_thread.run_sync(exchange, listener.port, [post("/direct/a", b"x") + b"POST /direct/b HT"])
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 400 ") == 1 and b"peer unexpectedly closed" in answer
    assert [call[0] for call in app.calls] == ["/direct/a"]


async def test_100_continue_for_a_request_pipelined_after_a_plain_one_comes_after_the_plain_answer(
    nursery: trio.Nursery,
) -> None:
    app = DirectEcho()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(post("/direct/a", b"x") + post("/direct/b", b"yz", "Expect: 100-continue\r\n")[:-2])
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "x"
    assert (await client.response(head_only=True))[0] == 100
    await client.send(b"yz")
    status, _, body = await client.response()
    assert status == 200 and json.loads(body)["body"] == "yz"
    client.close()


async def test_a_path_with_a_line_break_does_not_forge_a_log_line(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(DirectEcho):
        async def answer(
            self, path: str, raw_path: bytes, query: bytes, headers: list, body: bytes, respond: Respond
        ) -> None:
            self.calls.append((path, query, body))
            raise RuntimeError("a bug")

    app = Failing()
    listener = await listen(nursery, app)
    client = Client(listener.port)
    await client.send(post("/direct/x%0d%0aFORGED%20line", b"x"))
    assert (await client.response())[0] == 500
    client.close()
    assert app.calls[0][0] == "/direct/x\r\nFORGED line"  # the route had it decoded
    logged = [r.getMessage() for r in caplog.records if "error answering" in r.getMessage()]
    assert logged == ["error answering POST /direct/x%0d%0aFORGED%20line"]


# Bytes the parser-level fuzz (tests/unit/test_plain_request.py) does not try: whitespace that
# str.isspace or Unicode would take (\x0b \x0c \x1c \x85 \xa0), the blank lines h11 ends a head
# at (bare LF), continuation lines, lengths with leading zeros and tabs, version and request-line
# pieces, and every framing header.
HOSTILE = [
    *ALPHABET,
    b"\x0b",
    b"\x0c",
    b"\x1c",
    b"\x85",
    b"\xa0",
    b"%",
    b"Host:",
    b"host:\r\n",
    b"content-length:00\r\n",
    b"Content-Length:\t3 \r\n",
    b"\n\r\n",
    b"\n\n",
    b"\r\n ",
    b"\r\n\t",
    b"HTTP/1.0",
    b" HTTP/1.1\r\n",
    b"POST / HTTP/1.1\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"Upgrade: h2c\r\n",
]


def test_mutations_with_hostile_whitespace_and_line_ends_are_left_to_h11_or_read_as_h11_reads_them() -> None:
    rng = random.Random(150)
    seeds = [
        post("/a", b'{"n": 1}', "X-A: b\r\n"),
        post("/a", b"") + post("/b", b"abc"),
        b"POST /a HTTP/1.1\r\nhost:h\r\ncontent-length:0\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ]
    taken = 0
    for _ in range(20_000):
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 5)):
            at = rng.randint(0, len(data))
            cut = at + (rng.randint(1, 6) if rng.random() < 0.3 else 0)
            data = data[:at] + (b"" if cut > at and rng.random() < 0.5 else rng.choice(HOSTILE)) + data[cut:]
        taken += assert_as_h11_reads(data) is not None
    assert 1_000 < taken < 19_000, taken


async def test_connections_kept_alive_after_plain_requests_are_evicted_when_full_and_closed_on_shutdown(
    nursery: trio.Nursery,
) -> None:
    # A plain request is answered without h11: the connection must still wait for its next
    # request where the listener can evict it (oldest idle first) and shutdown can close it.
    limits = msgspec.structs.replace(LIMITS, keep_alive_timeout=10.0, max_connections=2)
    listener = await listen(nursery, DirectEcho(), limits)
    clients = []
    for n in range(3):
        client = Client(listener.port)
        await client.send(post(f"/direct/{n}", b"x"))
        assert (await client.response())[0] == 200
        clients.append(client)
    assert await clients[0].closed_within(1) is not None  # evicted for the third
    listener.stop.set()
    for client in clients[1:]:
        closed = await client.closed_within(1)
        assert closed is not None and closed < 0.5
        client.close()
    with trio.fail_after(1):
        await listener.stopped.wait()
