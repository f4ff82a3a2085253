"""An HTTP function's server and its gateway clients as attackers (issue 13, §4).

The server is a raw socket: it writes exactly the bytes each test names, so the
agent (runtimes/custom/http.py) and the gateway (fgd/web/gateway.py) see what a
hostile or broken server would send. Each misdeed must fail alone, with an error
saying what was wrong, and the next request on the same instance must be served.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import Api
from tests.integration.custom_support import (
    PYTHON_SERVER_BOOTSTRAP,
    READ_REQUEST,
    THREAD_PER_CONNECTION,
    deploy,
    script,
)

# Answers by the request's path: the answer's raw bytes, chosen by a word in the path; anything
# else is echoed (the request line as the server got it).
SERVER = (
    script(
        r"""
    import socket, threading, time

    VANISHED = []

    def answer(path):
        if b"forge-ids" in path:
            return (b"HTTP/1.1 200 OK\r\nX-Cff-Request-Id: forged\r\nX-Request-Id: forged\r\n"
                    b"X-Cff-Invoke-Summary: forged\r\nContent-Length: 2\r\n\r\nok")
        if b"fat-headers" in path:
            # 90 headers of 60 kB (each under http.client's line limit) and a 6 MB body.
            headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60000) for i in range(90))
            body = b"b" * (6 * 1024 * 1024)
            return b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if b"many-headers" in path:
            return b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 2000 + b"Content-Length: 0\r\n\r\n"
        if b"bad-status" in path:
            return b"HTTP/1.1 1000 Nope\r\nContent-Length: 0\r\n\r\n"
        if b"cut-short" in path:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)

    def handle(conn):
        stream = conn.makefile("rb")
        for line, length, head in requests(stream):
            path = line.split(b" ")[1]
            if b"early" in path:
                # A body too large for it: refused before it is read, as servers do.
                conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig")
                conn.shutdown(socket.SHUT_WR)
                time.sleep(0.5)
                conn.close()
                return
            stream.read(length)
            if b"vanish" in path:
                # Read the request, then close without a word: a crash mid-request.
                VANISHED.append(path)
                conn.close()
                return
            if b"tally" in path:
                count = b"%d" % len(VANISHED)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(count), count))
                continue
            if b"echo-headers" in path:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))
                continue
            if b"dribble" in path:
                # A byte every 50 ms, never done: only the function's timeout ends it.
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while True:
                    conn.sendall(b"x")
                    time.sleep(0.05)
            conn.sendall(answer(path))
            if b"then-close" in path:
                conn.close()  # an idle keep-alive connection the server ends, as servers do
                return
            if b"cut-short" in path:
                conn.close()  # mid-answer: 95 bytes of the body never come
                return
    """
    )
    + READ_REQUEST
    + THREAD_PER_CONNECTION
)
BOOTSTRAP = PYTHON_SERVER_BOOTSTRAP


@pytest.fixture(scope="module")
def route(api: Api) -> str:
    name = deploy(api, "http", {"bootstrap": BOOTSTRAP, "server.py": SERVER}, memory_size=512)
    assert api.route(name, f"/atk-{name}").status_code == 201
    return f"/atk-{name}"


def raw_get(api: Api, target: bytes) -> tuple[int, bytes]:
    """A GET with `target` sent byte for byte (httpx would normalise it): status and body."""
    port = int(api.daemon.gateway_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_the_server_cannot_forge_fgds_own_response_headers(api: Api, route: str) -> None:
    response = httpx.get(f"{api.daemon.gateway_url}{route}/forge-ids")
    assert response.status_code == 200 and response.content == b"ok"
    # One request id, fgd's: a client (or a log) keyed on it is not led to another request.
    ids = response.headers.get_list("x-cff-request-id")
    assert len(ids) == 1 and ids[0] != "forged", response.headers.raw
    assert response.headers.get_list("x-request-id") == ids
    assert "x-cff-invoke-summary" not in response.headers


@pytest.mark.parametrize(
    ("target", "seen"),
    [
        (b"/a%20b", b"/a%20b"),  # was refused: the decoded space is no valid HTTP path
        (b"/a%2Fb/%2e%2e/c", b"/a%2Fb/%2e%2e/c"),  # was forwarded as /a/b/../c
        (b"/x?q=%0d%0a&r=%20", b"/x?q=%0d%0a&r=%20"),
        (b"/a%0d%0aSet-Cookie:%20x=1", b"/a%0d%0aSet-Cookie:%20x=1"),  # no header splitting either
    ],
)
def test_a_percent_encoded_path_reaches_the_server_as_it_came(api: Api, route: str, target: bytes, seen: bytes) -> None:
    status, body = raw_get(api, route.encode() + target)
    assert status == 200, body
    assert body == route.encode() + seen


def test_response_headers_too_large_for_a_frame_are_a_clear_error(api: Api, route: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{api.daemon.gateway_url}{route}/fat-headers", timeout=30)
    assert response.status_code == 502
    error = response.json()["error_msg"]
    assert "Runtime.InvalidResponse" in error and "headers" in error, error
    assert time.monotonic() - started < 2.5, "answered at once, not at the function's timeout"
    # Through the API too, and the instance goes on serving.
    answer = api.invoke(route.removeprefix("/atk-"), {"httpMethod": "GET", "path": "/fat-headers"})
    assert answer.json()["errorType"] == "Runtime.InvalidResponse", answer.text[:300]
    assert httpx.get(f"{api.daemon.gateway_url}{route}/next").content == f"{route}/next".encode()


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("many-headers", "more than 100 headers"),
        ("bad-status", "BadStatusLine"),
        ("cut-short", "IncompleteRead"),
    ],
)
def test_a_broken_answer_is_an_invalid_response_at_once(api: Api, route: str, path: str, says: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{api.daemon.gateway_url}{route}/{path}", timeout=30)
    assert response.status_code == 502
    error = response.json()["error_msg"]
    # It was a bare Runtime.Timeout at the function's timeout: the forwarding thread died
    # naming the answer's error (a local `http` hid the module).
    assert "Runtime.InvalidResponse" in error and says in error, error
    assert time.monotonic() - started < 2.5
    assert httpx.get(f"{api.daemon.gateway_url}{route}/next").content == f"{route}/next".encode()


def test_underscored_x_cff_headers_of_a_client_are_removed_too(api: Api, route: str) -> None:
    # CGI and WSGI servers map `-` and `_` to one name (HTTP_X_CFF_AUTH_TOKEN): a client's
    # X_Cff_Auth_Token would pass for FunctionGraph's header.
    response = httpx.get(
        f"{api.daemon.gateway_url}{route}/echo-headers",
        headers={"X_Cff_Auth_Token": "forged", "x_cff_request_id": "forged", "X-Kept_Name": "kept"},
    )
    assert response.status_code == 200
    received = response.content.lower()
    assert b"forged" not in received, received
    assert b"x-kept_name: kept" in received and b"x-cff-request-id: " in received


def test_a_server_answering_a_byte_at_a_time_is_ended_by_the_timeout(api: Api, route: str) -> None:
    started = time.monotonic()
    response = httpx.get(f"{api.daemon.gateway_url}{route}/dribble", timeout=30)
    assert response.status_code == 502
    assert "Runtime.Timeout" in response.json()["error_msg"]
    assert time.monotonic() - started < 5
    assert httpx.get(f"{api.daemon.gateway_url}{route}/next").content == f"{route}/next".encode()


def test_a_request_the_server_dropped_is_not_sent_again(api: Api, route: str) -> None:
    # A POST the server read and then dropped was sent a second time on a new connection
    # (a payment made twice); only a kept-alive connection the server had already closed is
    # replaced, before the request goes out.
    before = int(httpx.get(f"{api.daemon.gateway_url}{route}/tally").content)
    response = httpx.post(f"{api.daemon.gateway_url}{route}/vanish", content=b"pay 10")
    assert response.status_code == 502
    assert "Runtime.InvalidResponse" in response.json()["error_msg"]
    assert int(httpx.get(f"{api.daemon.gateway_url}{route}/tally").content) == before + 1


def test_a_kept_alive_connection_the_server_closed_is_replaced(api: Api, route: str) -> None:
    assert httpx.get(f"{api.daemon.gateway_url}{route}/then-close").status_code == 200
    time.sleep(0.1)
    response = httpx.post(f"{api.daemon.gateway_url}{route}/after", content=b"x")
    assert response.status_code == 200 and response.content == f"{route}/after".encode()


@pytest.mark.parametrize(
    "event",
    [
        {"httpMethod": "GET", "path": "/caf\u00e9"},
        {"httpMethod": "GET", "path": "/a\x01b"},
        {"httpMethod": "GET", "path": "/x", "rawQueryString": "q=\x7f"},
        {"httpMethod": "GET", "path": "/x", "headers": {"X-Snow": "\u2603"}},
        {"httpMethod": "GET", "path": "/x", "headers": {"X Space": "v"}},
    ],
)
def test_an_event_http_cannot_carry_is_the_callers_error(api: Api, route: str, event: dict) -> None:
    # It was Runtime.InvalidResponse ("the server did not answer: InvalidURL/UnicodeEncodeError"),
    # blaming the function's server for the caller's event.
    error = api.invoke(route.removeprefix("/atk-"), event).json()
    assert error["errorType"] == "Runtime.InvalidRequest", error
    assert httpx.get(f"{api.daemon.gateway_url}{route}/next").content == f"{route}/next".encode()


def test_an_answer_before_the_body_is_read_reaches_the_client(api: Api, route: str) -> None:
    response = httpx.post(f"{api.daemon.gateway_url}{route}/early", content=b"x" * (3 * 1024 * 1024), timeout=30)
    assert response.status_code == 413 and response.content == b"big", response.text[:300]
