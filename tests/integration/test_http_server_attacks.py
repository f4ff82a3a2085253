"""A hostile client of the daemon's own HTTP server, on both listeners of a real daemon.

The server's guarantees are tested against a bare listener in tests/unit/test_http_attacks.py;
these check the same attacks end to end, through the apps the daemon really serves (the
management API on Quart, the sync invoke route, the gateway). "was: ..." marks a hole found
this way and fixed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import time

import psutil
import pytest

from tests.conftest import Api, Daemon, unique_name
from tests.integration.test_attack_client import healthy, raw_exchange

BODY = "def handler(event, context):\n    return {'statusCode': 200, 'body': event['httpMethod'] + 'x' * 20}\n"


@pytest.fixture(scope="module")
def route(api: Api) -> str:
    name = unique_name("srv")
    api.deploy(BODY, name=name)
    path = f"/{name}"
    assert api.route(name, path).status_code == 201
    return path


@pytest.mark.parametrize("listener", ["api", "gateway"])
def test_lower_case_head_gets_a_whole_answer(api: Api, route: str, listener: str) -> None:
    # was: no answer at all (the app saw HEAD and sent no body, h11 expected one for "head"),
    # and a traceback in the daemon's log for each request
    logged = len(api.daemon.log())
    port = api.daemon.port if listener == "api" else api.daemon.gateway_port
    path = route if listener == "gateway" else "/healthz"
    answer = raw_exchange(port, f"head {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    assert len(body) == length
    if listener == "gateway":
        assert body == b"head" + b"x" * 20  # the function saw the method as sent
    assert " ERROR " not in api.daemon.log()[logged:]
    assert healthy(api.daemon)


def test_connect_to_a_route_for_any_method_is_refused_not_left_unanswered(api: Api, route: str) -> None:
    # was: the function ran and answered 200, h11 took that for the start of a tunnel and refused
    # the body: the client got nothing and the daemon logged a traceback
    logged = len(api.daemon.log())
    answer = raw_exchange(api.daemon.gateway_port, f"CONNECT {route} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 501") and b"connection: close" in answer.lower(), answer[:200]
    assert b"FSS.0501" in answer
    assert " ERROR " not in api.daemon.log()[logged:]


@pytest.mark.parametrize(
    ("target", "status"), [(b"?", 400), (b"?a=1", 400), (b"%2fhealthz", 400), (b"http://[::1", 404)]
)
@pytest.mark.parametrize("listener", ["api", "gateway"])
def test_request_target_that_is_not_a_path_is_not_a_500(api: Api, target: bytes, status: int, listener: str) -> None:
    # was: the management API (Quart) failed on the first three and on an absolute URL it could
    # not parse, with a 500 and a traceback; the server now refuses a target that is not a path
    # and reduces an absolute URL to its path ("/" here)
    logged = len(api.daemon.log())
    port = api.daemon.port if listener == "api" else api.daemon.gateway_port
    answer = raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert " ERROR " not in api.daemon.log()[logged:]
    answer = raw_exchange(port, b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200" if listener == "api" else b"HTTP/1.1 404"), answer[:200]


def test_sigterm_under_hostile_clients_exits_well_within_shutdown_grace(fresh_daemon: Daemon) -> None:
    # was: 10.6 s (the whole shutdown_grace): clients that pipelined requests and read no
    # answer held their connections until the grace ran out
    fresh_daemon.start()
    socks: list[socket.socket] = []

    def connect(port: int, sent: bytes = b"") -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(sent)
        socks.append(sock)
        return sock

    for port in (fresh_daemon.port, fresh_daemon.gateway_port):
        for _ in range(10):
            connect(port)
            connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n")
            connect(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            reader = connect(port)
            reader.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(100):
                    reader.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
    time.sleep(0.5)
    start = time.monotonic()
    assert fresh_daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 4
    assert "still running after" not in fresh_daemon.log()
    for sock in socks:
        sock.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drop(port: int, how: str, path: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    if how == "reset":
        _reset(sock)
    elif how == "half-head":
        sock.sendall(request[:20])
        _reset(sock)
    elif how == "request-reset":
        sock.sendall(request)
        _reset(sock)
    elif how == "request-close":
        sock.sendall(request * 3)
        sock.close()
    elif how == "body-reset":
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        _reset(sock)
    elif how == "half-close":
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
        sock.close()
    else:
        sock.close()


def test_thousands_of_dropped_connections_leave_no_descriptor_in_the_daemon(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    daemon = psutil.Process(fresh_daemon.process.pid)  # type: ignore[union-attr]
    before = daemon.num_fds()
    ways = ["close", "reset", "half-head", "request-reset", "request-close", "body-reset", "half-close"]
    for port, path in ((fresh_daemon.port, b"/healthz"), (fresh_daemon.gateway_port, b"/nowhere")):
        for how in ways:
            for _ in range(150):
                _drop(port, how, path)
    # Each connection closes at once, within its linger (1 s) or at header_timeout.
    deadline = time.monotonic() + 8
    while daemon.num_fds() > before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.num_fds() <= before, (before, daemon.num_fds())
    assert not [c for c in daemon.net_connections("tcp") if c.status != psutil.CONN_LISTEN]
    assert healthy(fresh_daemon)
    assert " ERROR " not in fresh_daemon.log()
