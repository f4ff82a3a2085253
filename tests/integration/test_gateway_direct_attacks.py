"""Attacks on the gateway's direct routes (fgd.web.gateway `direct`) and the plain request with no
Content-Length (fgd.web.plain): raw bytes on loopback against a real daemon. A request answered
without h11 (plain), through h11 to the direct route (a Connection header) and through the ASGI
app (its body sent after its head) must be answered with the same bytes."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest

from tests.conftest import Api, Daemon
from tests.integration.test_gateway import ECHO, SHAPED, blanked, exchange_closed


def echo_path(api: Api) -> str:
    name = api.deploy(ECHO)["func_name"]
    assert api.route(name, f"/direct-{name}").status_code == 201
    return f"/direct-{name}"


def same(answer: bytes) -> bytes:
    """An answer with its request ids (headers and the echoed event's) blanked."""
    answer = re.sub(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"-", blanked(answer))
    # The h11 variant's own header, echoed in the event (and so in the body's length).
    answer = re.sub(rb', ?"connection": ?\["?keep-alive"?\]|, ?"connection": ?"keep-alive"', b"", answer)
    answer = re.sub(rb'"(start|end)": [0-9.]+', rb'"\1": -', answer)  # an HTTP function's clock
    return re.sub(rb"(?im)^content-length: .*$", b"content-length: -", answer)


def three_ways(port: int, request: bytes) -> tuple[bytes, bytes, bytes | None]:
    """The answers to `request` plain, through h11 (a Connection header) and, if it has a body,
    through the ASGI app (the body after a pause)."""
    head, _, body = request.partition(b"\r\n\r\n")
    plain = exchange_closed(port, request)
    through_h11 = exchange_closed(port, head + b"\r\nConnection: keep-alive\r\n\r\n" + body)
    through_asgi = exchange_closed(port, head + b"\r\n\r\n", body) if body else None
    return plain, through_h11, through_asgi


SHAPES = [
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "get {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "OPTIONS {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "head {p} HTTP/1.1\r\nHost: x\r\n\r\n",  # not HEAD: its answer has a body
    "CONNECT {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET http://x{p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\n" + "X-Many: 1\r\n" * 300 + "\r\n",
    "M-SEARCH {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "DELETE {p}/a%2Fb/%00/%0A/../..//x HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}/%ff%fe?a=%ff&b=%C3%A9&a=2&=&&c HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}?q=%zz+%2B HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n",
    "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Auth-Token: a\r\nX-Auth-Token: b\r\n\r\nabc",
    "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "POST {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "PUT {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX-Sp:  \t v \t \r\n\r\n\x00\xff\r\n",
]


def test_the_three_paths_answer_hostile_shapes_alike(api: Api) -> None:
    path = echo_path(api)
    port = api.daemon.gateway_port
    differ = []
    for shape in SHAPES:
        request = shape.format(p=path).encode("latin-1")
        plain, through_h11, through_asgi = three_ways(port, request)
        assert plain.startswith(b"HTTP/1.1 "), (shape, plain[:300])
        if same(plain) != same(through_h11) or (through_asgi is not None and same(plain) != same(through_asgi)):
            differ.append((shape, plain, through_h11, through_asgi))
    assert not differ, differ


PIPELINES = [
    # bytes that look like a body after a request without Content-Length: the next request
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\nhello",
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\nGET {p}?body=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01 garbage\r\n\r\n",
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\nGET {p} HTTP/1.0\r\n\r\n",
    "GET {p}?status=%22x%22 HTTP/1.1\r\nHost: x\r\n\r\nGET {p}?body=after HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}?headers=%7B%22Connection%22%3A%22close%22%7D HTTP/1.1\r\nHost: x\r\n\r\n"
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "HEAD {p}?body=abc HTTP/1.1\r\nHost: x\r\n\r\nGET {p}?body=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nabGET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}?status=304&body=x HTTP/1.1\r\nHost: x\r\n\r\nGET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}?headers=%7B%22Transfer-Encoding%22%3A%22chunked%22%2C%22Content-Length%22%3A%229%22%7D"
    " HTTP/1.1\r\nHost: x\r\n\r\nGET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {p}?headers=%7B%22X-Bad%22%3A%22a%5Cr%5Cnb%22%7D HTTP/1.1\r\nHost: x\r\n\r\n"
    "GET {p} HTTP/1.1\r\nHost: x\r\n\r\n",
]


def test_pipelines_on_the_gateway_are_answered_as_h11_answers_them(api: Api) -> None:
    name = api.deploy(SHAPED)["func_name"]
    assert api.route(name, f"/piped-{name}").status_code == 201
    path = f"/piped-{name}"
    port = api.daemon.gateway_port
    differ = []
    for shape in PIPELINES:
        request = shape.format(p=path).encode("latin-1")
        first_end = request.index(b"\r\n\r\n")
        plain = exchange_closed(port, request)
        through_h11 = exchange_closed(port, request[:first_end] + b"\r\nConnection: keep-alive" + request[first_end:])
        if same(plain) != same(through_h11):
            differ.append((shape, plain, through_h11))
    assert not differ, differ


def test_token_routes_and_http_functions_answer_alike_on_the_three_paths(api: Api) -> None:
    from tests.integration.custom_support import HTTP_FILES, deploy

    token = api.daemon.token
    echo = api.deploy(ECHO)["func_name"]
    assert api.route(echo, f"/locked-{echo}", auth="TOKEN").status_code == 201
    http = deploy(api, "http", HTTP_FILES)
    assert api.route(http, f"/served-{http}").status_code == 201
    port = api.daemon.gateway_port
    shapes = [
        f"GET /locked-{echo} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\nX-Auth-Token: wrong\r\n\r\n",
        f"GET /locked-{echo} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: wrong\r\nX-Auth-Token: {token}\r\n\r\n",
        f"GET /locked-{echo} HTTP/1.1\r\nHost: x\r\nAuthorization: bearer  {token} \r\n\r\n",
        f"POST /locked-{echo} HTTP/1.1\r\nHost: x\r\nX-Auth-Token:{token}\r\nContent-Length: 2\r\n\r\nhi",
        f"GET /locked-{echo} HTTP/1.1\r\nHost: x\r\nx-auth-token: {token[:-1]}\r\n\r\n",
        f"POST /served-{http}/a%2Fb/%20?x=%ff&y HTTP/1.1\r\nHost: x\r\nA: 1\r\na: 2\r\nContent-Length: 3\r\n\r\nabc",
        f"HEAD /served-{http}/x HTTP/1.1\r\nHost: x\r\n\r\n",
        f"get /served-{http} HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    differ = []
    for shape in shapes:
        request = shape.encode("latin-1")
        plain, through_h11, through_asgi = three_ways(port, request)
        assert plain.startswith(b"HTTP/1.1 "), (shape, plain[:300])
        if same(plain) != same(through_h11) or (through_asgi is not None and same(plain) != same(through_asgi)):
            differ.append((shape, plain, through_h11, through_asgi))
    assert not differ, differ
    assert "Traceback" not in api.daemon.log()


def test_answers_held_for_plain_clients_that_read_nothing_stay_in_the_body_budget(tmp_path) -> None:
    """A plain request (no h11, no ASGI) to a route whose answer does not fit the socket's buffers:
    while a client reads none of it, the answer counts in the gateway's max_body_memory, and a
    second one that would exceed it is refused (503); a client pipelining more requests behind
    the held one gets no more answers made (they wait their turn)."""
    config = '[gateway]\nlisten = "127.0.0.1:{port}"\nmax_body_memory = 1000000\n'
    daemon = Daemon(tmp_path / "state")
    daemon.config_path.write_text(config.format(port=daemon.gateway_port))  # type: ignore[union-attr]
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy("def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * 900_000}\n")[
            "func_name"
        ]
        assert api.route(name, f"/held-{name}").status_code == 201
        request = f"GET /held-{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        with socket.socket() as reader_of_nothing:
            reader_of_nothing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader_of_nothing.connect(("127.0.0.1", daemon.gateway_port))
            reader_of_nothing.sendall(request * 3)
            time.sleep(2)  # its first answer is being sent and does not fit in the socket's buffers
            refused = exchange_closed(daemon.gateway_port, request)
            assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
            assert b"FSS.0503" in refused
        time.sleep(0.5)  # gone, its client releases what it held
        answer = exchange_closed(daemon.gateway_port, request)
        assert answer.startswith(b"HTTP/1.1 200") and b"x" * 1000 in answer, answer[:200]
        assert daemon.stop(signal.SIGTERM) == 0
        assert "Traceback" not in daemon.log()
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("route", ["plain", "h11", "asgi"])
def test_sigterm_is_not_held_by_a_gateway_client_that_reads_nothing(tmp_path, route: str) -> None:
    """SIGTERM while a route's large answer waits for a client that reads none of it: the daemon
    exits cleanly within a couple of seconds, not after shutdown_grace or send_timeout, whichever
    way the request came (plain, through h11 to the direct route, through the ASGI app)."""
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        api = Api(daemon)
        source = "def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * 900_000}\n"
        path = f"/stuck-{api.deploy(source)['func_name']}"
        assert api.route(path[len("/stuck-") :], path).status_code == 201
        with socket.socket() as reader_of_nothing:
            reader_of_nothing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader_of_nothing.connect(("127.0.0.1", daemon.gateway_port))
            if route == "asgi":
                reader_of_nothing.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n".encode())
                time.sleep(0.05)
                reader_of_nothing.sendall(b"ab")
            else:
                extra = "Connection: keep-alive\r\n" if route == "h11" else ""
                reader_of_nothing.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            time.sleep(1.5)  # the answer is being written and does not fit the socket's buffers
            began = time.monotonic()
            assert daemon.stop(signal.SIGTERM) == 0
            assert time.monotonic() - began < 4
        log = daemon.log()
        assert "Traceback" not in log and "still running after" not in log
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


def test_bytes_after_a_request_without_content_length_are_the_next_request(api: Api) -> None:
    """A plain POST with neither Content-Length nor Transfer-Encoding has no body (RFC 9112, as
    h11 reads it): what follows it is a request of its own, answered second, never its body."""
    name = api.deploy(ECHO)["func_name"]
    assert api.route(name, f"/nolen-{name}").status_code == 201
    path = f"/nolen-{name}"
    answer = exchange_closed(
        api.daemon.gateway_port,
        f"POST {path} HTTP/1.1\r\nHost: x\r\n\r\nPOST {path}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    )
    assert answer.count(b"HTTP/1.1 201 ") == 2 and answer.count(b"HTTP/1.1 404 ") == 1, answer[:600]
    first, second = re.findall(rb'"path": "([^"]*)"[^\r]*?"body": "([^"]*)"', answer)
    assert first == (path.encode(), b"") and second == (f"{path}/smuggled".encode(), b"")


@pytest.mark.parametrize("tail", [b"\xff", b"?a=\xe9", b"?a=\x7f", b"/\x01"])
def test_a_route_target_with_a_byte_outside_visible_ascii_is_a_clean_400(api: Api, tail: bytes) -> None:
    """Neither the plain parser nor h11 takes such a target to the route (no decode error there)."""
    name = api.deploy(ECHO)["func_name"]
    assert api.route(name, f"/bytes-{name}").status_code == 201
    answer = exchange_closed(
        api.daemon.gateway_port, f"GET /bytes-{name}".encode() + tail + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and b"FSS.0400" in answer, answer[:300]
    assert "Traceback" not in api.daemon.log()
