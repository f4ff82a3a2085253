"""Attacks on the plain path against a real daemon (issue 15): an invocation of the one plain shape
(HTTP/1.1, a path, one Host, one Content-Length, the whole body in the read, no framing header)
is read and answered without h11. Raw sockets, so the request surely is plain: no Connection
header (the tests of tests/integration/test_direct_route_attacks.py mostly ask for a close,
which sends their requests through h11)."""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

from tests.conftest import Api, unique_name
from tests.integration.test_direct_route_attacks import ECHO, answers, exchange, invoke_path, post, request_ids
from tests.unit.test_plain_request import MAX_HEAD


def one_answer(sock: socket.socket) -> tuple[int, list[tuple[str, str]], bytes]:
    """The next answer on a kept-alive connection (framed by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head = data.partition(b"\r\n\r\n")[0]
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(data) < len(head) + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    (found,) = answers(data)
    return found


def test_plain_invocations_one_per_read_keep_auth_errors_ids_and_the_connection(api: Api) -> None:
    # Each request sent alone, so each is the first of its read: every one is a plain request.
    name = api.deploy(ECHO)["func_name"]
    token = {"X-Auth-Token": api.daemon.token}
    sequence = [
        (post(invoke_path(name), b'{"n": 1}', token), 200),
        (post(invoke_path(name), b'{"n": 2}', {}), 401),
        (post(invoke_path(name), b'{"n": 3}', {"X-Auth-Token": "x" * 40}), 401),
        (post(invoke_path(unique_name("gone")), b'{"n": 4}', token), 404),
        (post(invoke_path(name), b'{"n":', token), 400),
        (post(invoke_path(name), b'{"n": 6}', token), 200),
    ]
    with socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10) as sock:
        for request, expected in sequence:
            sock.sendall(request)
            status, headers, body = one_answer(sock)
            assert status == expected, body
            assert len(request_ids(headers)) == 1, headers
            assert "connection" not in dict(headers)  # kept alive through refusals
            if status == 200:
                assert request_ids(headers) == [dict(headers)["x-cff-request-id"]]
    assert json.loads(body) == {"n": 6}


def test_a_plain_invocation_then_a_malformed_request_is_200_then_400_and_closed(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    good = post(invoke_path(name), b'{"n": 1}', {"X-Auth-Token": api.daemon.token})
    smuggled = b"POST /v2/default/fgs/functions/x/invocations HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello"
    got = answers(exchange(api.daemon.port, [good + smuggled]))
    assert [s for s, _, _ in got] == [200, 400]
    assert json.loads(got[0][2]) == {"n": 1}
    assert dict(got[1][1])["connection"] == "close" and json.loads(got[1][2])["error_code"] == "FSS.0400"
    assert [len(request_ids(h)) for _, h, _ in got] == [1, 1]


def test_a_plain_invocation_with_a_head_at_the_limit_is_served_one_byte_more_is_431(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    base = post(invoke_path(name), b"", {"X-Auth-Token": api.daemon.token, "X-Pad": ""})
    for size, expected in ((MAX_HEAD, 200), (MAX_HEAD + 1, 431)):
        request = base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(base)))
        assert request.index(b"\r\n\r\n") + 4 == size
        ((status, headers, _),) = answers(exchange(api.daemon.port, [request], half_close=True))
        assert status == expected
        assert len(request_ids(headers)) == 1


def test_clients_that_drop_plain_invocations_mid_answer_leave_no_connection_open(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    good = post(invoke_path(name), b'{"n": 1}', {"X-Auth-Token": api.daemon.token})
    api.invoke(name)  # warm
    daemon = psutil.Process(api.daemon.process.pid)  # type: ignore[union-attr]

    ports: set[int] = set()

    def attack() -> None:
        for n in range(60):
            sock = socket.create_connection(("127.0.0.1", api.daemon.port))
            ports.add(sock.getsockname()[1])
            if n % 3 == 0:
                # A reset as soon as sent: the answer has nowhere to go.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.sendall(good * 3)
            elif n % 3 == 1:
                sock.sendall(good + good[:40])  # a plain one, then part of a head, then gone
            else:
                sock.sendall(good)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(65536)
            sock.close()

    log_start = len(api.daemon.log())

    def open_connections() -> int:
        # The daemon's sockets of the attack's connections (its instances' descriptors come and go).
        return sum(1 for c in daemon.net_connections(kind="tcp") if c.raddr and c.raddr.port in ports)

    attack()
    deadline = time.monotonic() + 5
    while open_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_connections() == 0
    assert "Traceback" not in api.daemon.log()[log_start:]


@pytest.mark.parametrize("end", ["%0A", "%0D%0A", "%0a"])
def test_an_invocation_path_with_an_encoded_line_break_after_it_runs_nothing(api: Api, end: str) -> None:
    # was: the route's `$` matched before the decoded path's final newline, so
    # `.../invocations%0A` ran the function (a path filter in front of the daemon refusing that
    # path could be passed by).
    name = api.deploy(ECHO)["func_name"]
    token = {"X-Auth-Token": api.daemon.token}
    with socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10) as sock:
        sock.sendall(post(invoke_path(name) + end, b'{"n": 1}', token))
        status, _, body = one_answer(sock)
        assert status == 404, body
        sock.sendall(post(invoke_path(name), b'{"n": 2}', token))
        status, _, body = one_answer(sock)
        assert status == 200 and json.loads(body) == {"n": 2}
