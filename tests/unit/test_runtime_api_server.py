"""The runtime API's HTTP/1.1 server (runtimes/custom/api_server.py) on a loopback socket, with a
handler that echoes: framing, keep-alive, ordering, bounds, and the hand-over of a parked request."""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from runtimes.custom import api_server
from runtimes.custom.api_server import BadRequest, Connection, Request, Server

LIMIT = 1000


class Echo:
    """GET /wait parks its connection; anything else is answered 200 with `METHOD path body`."""

    body_limit = LIMIT

    def __init__(self) -> None:
        self.parked: collections.deque[Connection] = collections.deque()
        self.closed_conns = 0
        self.lock = threading.Lock()

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.path == "/wait":
            conn.busy = True
            with self.lock:
                self.parked.append(conn)
            return
        if request.path == "/big":
            conn.respond(200, b"x" * (8 * 1024 * 1024))
            return
        conn.respond(200, f"{request.method} {request.target} ".encode() + bytes(request.body))

    def on_oversize(self, conn: Connection, request: Request) -> None:
        conn.respond(413, b"too large")

    def on_refused(self, conn: Connection, error: BadRequest) -> None:
        conn.respond(error.status, error.message.encode(), close=True)

    def closed(self, conn: Connection) -> None:
        with self.lock:
            self.closed_conns += 1
            if conn in self.parked:
                self.parked.remove(conn)


@pytest.fixture
def server() -> Iterator[tuple[Echo, tuple[str, int]]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    handler = Echo()
    thread = threading.Thread(target=Server(listener, handler, lambda sock: True).serve_forever, daemon=True)
    thread.start()
    yield handler, listener.getsockname()
    listener.close()


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=2)


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` answers (status, body), reading exactly their Content-Length."""
    data = b""
    answers = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return answers
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        if status == 100:
            answers.append((100, b""))
            continue
        size = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        while len(data) < size:
            data += sock.recv(65536)
        answers.append((status, data[:size]))
        data = data[size:]
    return answers


def closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.settimeout(2)
        while chunk := sock.recv(65536):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_pipelined_requests_are_answered_in_order_on_one_connection(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"".join(b"POST /n HTTP/1.1\r\nContent-Length: 1\r\n\r\n%d" % n for n in range(5)))
        assert read_answers(sock, 5) == [(200, b"POST /n %d" % n) for n in range(5)]
        sock.sendall(b"GET /again HTTP/1.1\r\n\r\n")  # still open: kept alive
        assert read_answers(sock, 1) == [(200, b"GET /again ")]


def test_a_chunked_body_is_assembled(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
        )
        assert read_answers(sock, 1) == [(200, b"POST /c abcde")]


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"z" * 100,
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nz",
        b"POST /c HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nzz",
        b"POST /c HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /c HTTP/1.1\r\nContent-Length : 1\r\n\r\nz",
        b"GARBAGE\r\n\r\n",
        b"GET /c HTTP/2.0\r\n\r\n",
        b"GET /c\r\n\r\n",
    ],
)
def test_malformed_requests_are_a_400_and_close_the_connection(server, raw: bytes) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(raw)
        assert read_answers(sock, 1)[0][0] == 400
        assert closed_by_server(sock)


def test_a_head_over_the_limit_is_refused(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"GET /c HTTP/1.1\r\nX-Big: " + b"a" * (api_server.HEAD_LIMIT + 10))
        assert read_answers(sock, 1)[0][0] == 400


def test_a_head_sent_a_byte_at_a_time_is_read(server) -> None:
    _, address = server
    with connect(address) as sock:
        for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n":
            sock.sendall(bytes([byte]))
        assert read_answers(sock, 1) == [(200, b"GET /slow ")]


def test_a_body_over_the_limit_is_413_read_and_dropped_and_the_connection_serves_on(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1) + b"x" * (LIMIT + 1))
        sock.sendall(b"GET /next HTTP/1.1\r\n\r\n")
        assert read_answers(sock, 2) == [(413, b"too large"), (200, b"GET /next ")]


def test_a_body_past_the_discard_limit_is_413_and_the_connection_closes(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (api_server.DISCARD_LIMIT + 1))
        assert read_answers(sock, 1) == [(413, b"too large")]
        assert closed_by_server(sock)


def test_a_chunked_body_over_the_limit_is_413_and_closes(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (LIMIT + 1))
        assert read_answers(sock, 1) == [(413, b"too large")]
        assert closed_by_server(sock)


def test_expect_100_continue_gets_its_interim_answer(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        assert read_answers(sock, 1) == [(200, b"POST /e abc")]


def test_http_1_0_closes_unless_kept_alive_and_connection_close_is_honoured(server) -> None:
    _, address = server
    for raw, closes in (
        (b"GET /a HTTP/1.0\r\n\r\n", True),
        (b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", True),
        (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ):
        with connect(address) as sock:
            sock.sendall(raw)
            assert read_answers(sock, 1) == [(200, b"GET /a ")]
            sock.settimeout(0.3)
            try:
                assert (sock.recv(1) == b"") == closes
            except TimeoutError:
                assert not closes


def test_a_parked_request_is_answered_from_another_thread_then_the_next_one_is_taken(server) -> None:
    handler, address = server
    with connect(address) as sock:
        sock.sendall(b"GET /wait HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n")
        deadline = time.monotonic() + 2
        while not handler.parked and time.monotonic() < deadline:
            time.sleep(0.005)
        conn = handler.parked.popleft()
        # The pipelined request behind it waits: nothing is answered before the parked one.
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(2)
        assert conn.deliver(api_server.response(200, b"delivered", None, False), "frame")
        assert read_answers(sock, 2) == [(200, b"delivered"), (200, b"GET /after ")]


def test_a_parked_request_whose_client_left_is_not_delivered(server) -> None:
    handler, address = server
    sock = connect(address)
    sock.sendall(b"GET /wait HTTP/1.1\r\n\r\n")
    deadline = time.monotonic() + 2
    while not handler.parked and time.monotonic() < deadline:
        time.sleep(0.005)
    conn = handler.parked[0]
    sock.close()
    # The loop saw the client go: the connection left the parked list (closed), or a delivery
    # racing with that says it was not delivered.
    deadline = time.monotonic() + 2
    while handler.parked and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not handler.parked
    assert not conn.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "frame")


def test_connections_past_the_limit_close_the_least_recently_active(server, monkeypatch) -> None:
    handler, address = server
    monkeypatch.setattr(api_server, "MAX_CONNECTIONS", 20)
    socks = []
    for _ in range(30):
        socks.append(connect(address))
        socks[-1].sendall(b"GET /half HTTP/1.1\r\nHo")  # half a head each, never finished
        time.sleep(0.01)  # taken in before the next comes: the order of activity is the order here
    time.sleep(0.3)
    assert [closed_by_server(sock) for sock in socks[:10]] == [True] * 10
    assert handler.closed_conns == 10  # the handler was told of each (a parked GET leaves its list)
    with connect(address) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\n\r\n")
        assert read_answers(sock, 1) == [(200, b"GET /ok ")]
    for sock in socks:
        sock.close()


def test_requests_piped_in_without_reading_answers_are_cut_off(server) -> None:
    _, address = server
    with connect(address) as sock:
        sock.settimeout(2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        burst = b"GET /flood HTTP/1.1\r\n\r\n" * 10000
        sent = 0
        outcome = "all taken"
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(burst)
                sent += len(burst)
        except TimeoutError:
            outcome = "stalled"
        except OSError:
            outcome = "closed"
        assert outcome in ("closed", "stalled") and sent < 16 * 1024 * 1024, (outcome, sent)


def test_a_client_that_closed_its_end_without_reading_a_long_answer_costs_no_cpu(server) -> None:
    # Its end closed, the socket stays readable (EOF) for as long as the answer waits: polled for
    # reading, the loop spun at full speed until the client went.
    _, address = server
    with connect(address) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.1)
        started = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - started < 0.1
