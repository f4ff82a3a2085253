"""The HTTP function agent's own client (runtimes/custom/upstream.py, issue 15) against a hostile
server and hostile callers.

The server is a raw socket that writes exactly the bytes each test names: answers with more
bytes than asked for, two answers to one request, framing that disagrees with itself, interim
answers without end, header values HTTP cannot carry. Whatever it sends, every caller must get
the answer to its own request (never one the server sent earlier, out of turn), a request that
may not be repeated must reach the server once, a broken answer must fail alone and at once
(or at the function's timeout when the server never finishes), and the instance must go on
serving. Callers come through a gateway route and the sync invoke API.
"""

from __future__ import annotations

import threading
import time
import uuid

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

# A second answer the server sends where none was asked for: no caller may ever see it.
SMUGGLED = b"SMUGGLED"
SERVER = (
    script(
        r"""
    import random, socket, struct, threading, time

    SEEN = []  # "METHOD path" of every request read, in order
    FULL = 6 * 1024 * 1024
    BIG = bytes(range(256)) * (FULL // 256)
    SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"

    def reply(body, status=b"200 OK", extra=b""):
        return b"HTTP/1.1 " + status + b"\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def handle(conn):
        stream = conn.makefile("rb")
        for line, length, head in requests(stream):
            method, path = line.split(b" ")[:2]
            SEEN.append(method + b" " + path)
            if b"/count/" in path:
                tag = path.split(b"/count/")[1]
                count = b"%d" % sum(tag in seen for seen in SEEN[:-1])
                conn.sendall(reply(count))
                continue
            if b"hold-early" in path:
                # Refused as below, but the connection neither read on nor closed: a server that
                # breaks HTTP (it must read the body or close). Its receive buffer stays small, so
                # the kernels cannot take the whole body in its stead.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                conn.sendall(reply(b"too big", b"413 Payload Too Large"))
                time.sleep(60)
                return
            if b"early" in path:
                # The body is too large for it: refused before it is read, and the connection
                # closed at once (with the body unread, the kernel resets it).
                conn.sendall(reply(b"too big", b"413 Payload Too Large", b"Connection: close\r\n"))
                conn.close()
                return
            body = stream.read(length)
            echo = method + b" " + path + b" %d" % len(body)
            if b"vanish-once" in path and sum(path == seen.split(b" ")[1] for seen in SEEN) == 1:
                conn.close()  # read it, then closed without a word (a crash) the first time only
                return
            if b"dribble-full" in path:
                # A full 6 MB answer, its head and first 20,000 bytes a byte per write.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                data = b"HTTP/1.1 200 OK\r\nX-Slow: yes\r\nContent-Length: %d\r\n\r\n" % FULL + BIG
                for i in range(len(data) - FULL + 20000):
                    conn.send(data[i : i + 1])
                conn.sendall(data[len(data) - FULL + 20000 :])
            elif b"heads" in path:
                conn.sendall(reply(head))
            elif b"extra" in path:
                conn.sendall(reply(echo) + SMUGGLED)  # two answers to one request
            elif b"late" in path:
                conn.sendall(reply(echo))
                time.sleep(0.05)
                conn.sendall(SMUGGLED)  # the second answer after a pause, still before any request
            elif b"overlong" in path:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED)
            elif b"te-cl" in path:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\n\r\n" + SMUGGLED
                )
            elif b"no-content" in path:
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
            elif method == b"HEAD":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
            elif b"reset-mid" in path:
                # Half an answer, then a reset (SO_LINGER 0): a crash while answering.
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
                time.sleep(0.05)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            elif b"hints" in path:
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" * 50 + reply(echo))
            elif b"interim-flood" in path:
                while True:
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
            elif b"interim-close" in path:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                conn.close()
                return
            elif b"endless-trailers" in path:
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
                while True:
                    conn.sendall(b"X-Trailer: t\r\n" * 1000)
            elif b"chunk-line" in path:
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"e" * 70000 + b"\r\nok")
            elif b"nul-value" in path:
                conn.sendall(reply(b"nul", extra=b"X-A: a\x00b\r\n"))
            elif b"cr-value" in path:
                conn.sendall(reply(b"cr", extra=b"X-A: a\rX-Cff-Request-Id: forged\r\n"))
            elif b"ctl-value" in path:
                conn.sendall(reply(b"ctl", extra=b"X-A: a\x01b\r\n"))
            elif b"folded" in path:
                conn.sendall(reply(b"folded", extra=b"X-Folded: one\r\n two\r\n"))
            elif b"switch" in path:
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\n")
            elif b"flaky" in path:
                conn.sendall(reply(echo))
                if random.random() < 0.5:
                    conn.close()  # a kept-alive connection ended at random, without Connection: close
                    return
            else:
                if b"sleep" in path:
                    time.sleep(random.random() * 0.05)
                conn.sendall(reply(echo))
    """
    )
    + READ_REQUEST
    + THREAD_PER_CONNECTION
)
BOOTSTRAP = PYTHON_SERVER_BOOTSTRAP
# The function's timeout (s): what ends a server that never finishes its answer.
TIMEOUT = 2


@pytest.fixture(scope="module")
def hostile(api: Api) -> tuple[str, str]:
    """The function's name and its gateway route's URL."""
    name = deploy(api, "http", {"bootstrap": BOOTSTRAP, "server.py": SERVER}, memory_size=512, timeout=TIMEOUT)
    assert api.route(name, f"/up-{name}").status_code == 201
    return name, f"{api.daemon.gateway_url}/up-{name}"


def tag() -> str:
    return uuid.uuid4().hex[:12]


def own(url: str, method: str = "GET", content: bytes = b"") -> None:
    """A request after the attack gets the answer to itself, not one the server sent earlier."""
    path = f"/own-{tag()}"
    response = httpx.request(method, url + path, content=content, timeout=10)
    assert response.status_code == 200, response.text[:300]
    prefix = url.split("/", 3)[3]
    assert response.content == f"{method} /{prefix}{path} {len(content)}".encode(), response.content[:300]


def count(url: str, word: str) -> int:
    """How many requests naming `word` the server has read."""
    return int(httpx.get(f"{url}/count/{word}", timeout=10).content)


@pytest.mark.parametrize("path", ["extra", "late", "overlong", "te-cl"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_answer_the_server_sends_out_of_turn_reaches_no_caller(
    hostile: tuple[str, str], path: str, method: str
) -> None:
    _, url = hostile
    first = httpx.request(method, f"{url}/{path}-{tag()}", content=b"abc" if method == "POST" else b"", timeout=10)
    assert first.status_code == 200 and SMUGGLED not in first.content, first.content[:300]
    time.sleep(0.1)  # the late second answer is in by now
    # The next requests, GET and POST, get their own answers: the connection with bytes waiting
    # is replaced before they go out.
    own(url, "GET")
    own(url, "POST", b"pay 10")


def test_a_full_size_answer_dribbled_a_byte_at_a_time_arrives_whole(hostile: tuple[str, str]) -> None:
    _, url = hostile
    started = time.monotonic()
    response = httpx.get(f"{url}/dribble-full", timeout=10)
    assert response.status_code == 200 and response.headers["x-slow"] == "yes"
    assert response.content == bytes(range(256)) * (6 * 1024 * 1024 // 256)
    assert time.monotonic() - started < TIMEOUT
    own(url)


def test_a_head_or_204_answer_with_a_body_does_not_shift_the_answers(api: Api, hostile: tuple[str, str]) -> None:
    name, url = hostile
    head = api.invoke(name, {"httpMethod": "HEAD", "path": "/head"}).json()
    assert head["statusCode"] == 200 and head["body"] == "", head
    own(url, "POST", b"after head")
    no_content = httpx.get(f"{url}/no-content", timeout=10)
    assert no_content.status_code == 204 and no_content.content == b""
    own(url, "GET")


def test_interim_answers_are_skipped_however_many(api: Api, hostile: tuple[str, str]) -> None:
    name, url = hostile
    # 50 103 Early Hints then the answer. (http.client took the first 103 for the answer: a 502.)
    response = httpx.get(f"{url}/hints", timeout=10)
    assert response.status_code == 200 and response.content.endswith(b"/hints 0"), response.content[:300]
    answer = api.invoke(name, {"httpMethod": "GET", "path": "/hints"}).json()
    assert answer["statusCode"] == 200, answer


@pytest.mark.parametrize("path", ["interim-flood", "endless-trailers"])
def test_an_answer_without_end_is_ended_by_the_timeout(api: Api, hostile: tuple[str, str], path: str) -> None:
    name, url = hostile
    started = time.monotonic()
    response = httpx.get(f"{url}/{path}", timeout=30)
    assert response.status_code == 502
    assert "Runtime.Timeout" in response.json()["error_msg"]
    assert time.monotonic() - started < TIMEOUT + 2
    answer = api.invoke(name, {"httpMethod": "GET", "path": f"/{path}"})
    assert answer.json()["errorType"] == "Runtime.Timeout", answer.text[:300]
    own(url)  # on a new instance


def test_interim_answer_then_close_is_an_error_and_not_sent_again(hostile: tuple[str, str]) -> None:
    _, url = hostile
    word = f"interim-close-{tag()}"
    own(url)  # the connection is a kept-alive one: a GET on it may be repeated only if it got no answer
    started = time.monotonic()
    response = httpx.get(f"{url}/{word}", timeout=10)
    assert response.status_code == 502
    error = response.json()["error_msg"]
    assert "Runtime.InvalidResponse" in error and "IncompleteRead" in error, error
    assert time.monotonic() - started < 1.5
    # A 100 says the request arrived: it is not sent again. (http.client saw RemoteDisconnected
    # after the 100 and sent the GET twice.)
    assert count(url, word) == 1
    own(url)


def test_a_lost_idempotent_request_is_repeated_once_and_a_post_never(hostile: tuple[str, str]) -> None:
    _, url = hostile
    own(url)  # a kept-alive connection to lose it on
    word = f"vanish-once-{tag()}"
    # The server reads the GET and closes without answering: on a kept-alive connection that is
    # what an idle close racing the request looks like, and a GET may be sent again.
    response = httpx.get(f"{url}/{word}", timeout=10)
    assert response.status_code == 200 and response.content.endswith(word.encode() + b" 0")
    assert count(url, word) == 2
    own(url)
    word = f"vanish-once-{tag()}"
    response = httpx.post(f"{url}/{word}", content=b"pay 10", timeout=10)
    assert response.status_code == 502
    assert "RemoteDisconnected" in response.json()["error_msg"]
    assert count(url, word) == 1


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_request_whose_answer_was_cut_by_a_reset_is_not_sent_again(hostile: tuple[str, str], method: str) -> None:
    # The server had the request (it began to answer): only a request that got no answer at all
    # on a reused connection may go out again. The reset was taken for an idle close and the
    # GET or PUT sent a second time (http.client read the body outside that retry).
    _, url = hostile
    own(url)
    word = f"reset-mid-{tag()}"
    response = httpx.request(method, f"{url}/{word}", content=b"v" if method == "PUT" else b"", timeout=10)
    assert response.status_code == 502
    assert "Runtime.InvalidResponse" in response.json()["error_msg"], response.text[:300]
    assert count(url, word) == 1
    own(url)


def test_a_server_closing_kept_alive_connections_at_random_loses_no_request(hostile: tuple[str, str]) -> None:
    _, url = hostile
    word = f"flaky-{tag()}"
    with httpx.Client(timeout=10) as client:
        for n in range(30):
            method = "POST" if n % 2 else "GET"
            response = client.request(method, f"{url}/{word}/{n}", content=b"x" * n)
            assert response.status_code == 200, response.text[:300]
            assert response.content == f"{method} /{url.split('/', 3)[3]}/{word}/{n} {n}".encode(), response.content
    assert count(url, word) == 30  # each once


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("nul-value", "a header line with a CR or NUL"),
        ("cr-value", "a header line with a CR or NUL"),
        ("ctl-value", "response header is refused"),
        ("chunk-line", "LineTooLong"),
        ("switch", "not a final HTTP status"),
    ],
)
def test_an_answer_http_cannot_pass_on_is_refused_and_the_instance_serves_on(
    hostile: tuple[str, str], path: str, says: str
) -> None:
    _, url = hostile
    started = time.monotonic()
    response = httpx.get(f"{url}/{path}", timeout=10)
    assert response.status_code == 502
    assert says in response.json()["error_msg"], response.text[:300]
    assert "forged" not in str(response.headers.raw)
    assert time.monotonic() - started < 1.5
    own(url)


def test_a_folded_header_is_joined(hostile: tuple[str, str]) -> None:
    _, url = hostile
    response = httpx.get(f"{url}/folded", timeout=10)
    assert response.status_code == 200 and response.headers["x-folded"] == "one two"


def test_the_sync_api_gets_the_same_verdicts_and_never_another_requests_answer(
    api: Api, hostile: tuple[str, str]
) -> None:
    name, _ = hostile
    # A CR or NUL in a header: an invalid answer here too (it was passed on in the JSON).
    for path in ("/cr-value", "/nul-value"):
        error = api.invoke(name, {"httpMethod": "GET", "path": path}).json()
        assert error["errorType"] == "Runtime.InvalidResponse" and "CR or NUL" in error["errorMessage"], error
    # Another control character is JSON data there (the gateway refuses it: it cannot send it).
    answer = api.invoke(name, {"httpMethod": "GET", "path": "/ctl-value"}).json()
    assert answer["statusCode"] == 200 and answer["headers"]["x-a"] == "a\x01b", answer
    answer = api.invoke(name, {"httpMethod": "GET", "path": "/extra"}).json()
    assert answer["body"].startswith("GET /extra"), answer
    answer = api.invoke(name, {"httpMethod": "GET", "path": "/after"}).json()
    assert answer["body"] == "GET /after 0", answer


def test_a_callers_framing_headers_cannot_smuggle_a_second_request(api: Api, hostile: tuple[str, str]) -> None:
    name, url = hostile
    word = f"smuggled-{tag()}"
    inner = f"GET /{word} HTTP/1.1\r\nHost: x\r\n\r\n"
    framing = [
        ({"Content-Length": "0"}, inner),
        ({"Transfer-Encoding": "chunked"}, "0\r\n\r\n" + inner),
        ({"Content-Length": ["0", "5"], "content-length": "1", "Host": ["a", "b"]}, inner),
    ]
    for headers, body in framing:
        event = {"httpMethod": "POST", "path": "/front", "multiValueHeaders": headers, "body": body}
        answer = api.invoke(name, event).json()
        assert answer["body"] == f"POST /front {len(body)}", answer
        # The server saw one Host and the one Content-Length the agent computed, nothing else.
        event["path"] = "/heads"
        lines = api.invoke(name, event).json()["body"].lower().splitlines()
        framing_lines = [
            line for line in lines if line.split(":")[0] in ("host", "content-length", "transfer-encoding")
        ]
        assert sorted(framing_lines) == sorted([f"content-length: {len(body)}", lines[0]]), lines
        assert lines[0].startswith("host: ") and lines[0] != "host: b", lines
    assert count(url, word) == 0


def test_an_early_answer_to_a_large_body_reaches_the_caller(hostile: tuple[str, str]) -> None:
    _, url = hostile
    own(url)  # on a kept-alive connection: a PUT there may not go out twice either
    for method in ("POST", "PUT"):
        word = f"early-{tag()}"
        started = time.monotonic()
        response = httpx.request(method, f"{url}/{word}", content=b"x" * (4 * 1024 * 1024), timeout=30)
        # The server closed with the body unread: the send failed, but its answer had come.
        assert response.status_code == 413 and response.content == b"too big", response.text[:300]
        assert time.monotonic() - started < 1.5
        assert count(url, word) == 1
        own(url)


def test_an_early_answer_the_server_holds_ends_at_the_timeout(api: Api, hostile: tuple[str, str]) -> None:
    # The server answers after the headers and then neither reads the body nor closes: the agent
    # is still sending it (5.5 MB is more than the kernels' buffers take) and reads nothing until
    # it is all sent, as with http.client. The function's timeout ends it; a new instance serves.
    name, url = hostile
    started = time.monotonic()
    event = {"httpMethod": "POST", "path": "/hold-early", "body": "x" * (5_500_000)}
    error = api.invoke(name, event).json()
    assert error["errorType"] == "Runtime.Timeout", str(error)[:300]
    assert time.monotonic() - started < TIMEOUT + 2
    own(url)


@pytest.fixture(scope="module")
def concurrent(api: Api) -> str:
    name = deploy(
        api,
        "http",
        {"bootstrap": BOOTSTRAP, "server.py": SERVER},
        memory_size=512,
        timeout=TIMEOUT,
        strategy_config={"concurrency": 1, "concurrent_num": 8},
    )
    assert api.route(name, f"/upc-{name}").status_code == 201
    return f"{api.daemon.gateway_url}/upc-{name}"


def test_with_requests_sharing_an_instance_each_caller_gets_its_own_answer(concurrent: str) -> None:
    # Eight forwarding threads, each with its own connection, against answers with bytes past
    # their end and a server that closes connections at random. (An answer the server sends out
    # of turn *after* the next request went out on that connection is, for HTTP/1.1, the answer
    # to it: no client can tell, and the server could as well have sent it as that answer. Only
    # bytes that come before the request is sent are refused: test_upstream_attacks.py.)
    url = concurrent
    word = tag()
    kinds = ["sleep", "extra", "overlong", "te-cl", "flaky"]
    results: dict[int, httpx.Response] = {}

    def method_of(n: int) -> str:
        # A POST on a connection the server closes as it is reused is lost, not repeated: only
        # GETs go to the server that closes at random.
        return "POST" if n % 2 and kinds[n % len(kinds)] != "flaky" else "GET"

    def call(n: int) -> None:
        path = f"{url}/{kinds[n % len(kinds)]}-{word}-{n}-end"
        results[n] = httpx.request(method_of(n), path, content=b"x" * n, timeout=10)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    prefix = url.split("/", 3)[3]
    for n, response in results.items():
        assert response.status_code == 200, response.text[:300]
        kind = kinds[n % len(kinds)]
        expected = b"ok" if kind in ("overlong", "te-cl") else f"{method_of(n)} /{prefix}/{kind}-{word}-{n}-end {n}"
        assert response.content == (expected if isinstance(expected, bytes) else expected.encode()), n
    for n in range(40):
        seen = count(url, f"{word}-{n}-end")
        assert seen == 1 if method_of(n) == "POST" else seen >= 1, (n, seen)


def test_a_request_that_never_ends_beside_others_ends_at_the_timeout_alone(concurrent: str) -> None:
    # One forwarding thread reads interim answers without end; the others keep their own
    # connections and answers. The timeout ends the endless one (with its instance) in time.
    url = concurrent
    prefix = url.split("/", 3)[3]
    flood: list[httpx.Response] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: flood.append(httpx.get(f"{url}/interim-flood", timeout=30)))
    thread.start()
    time.sleep(0.2)
    for n in range(5):
        response = httpx.post(f"{url}/sleep-{n}", content=b"abc", timeout=10)
        assert response.content == f"POST /{prefix}/sleep-{n} 3".encode(), response.text[:300]
    thread.join()
    assert flood[0].status_code == 502 and "Runtime.Timeout" in flood[0].json()["error_msg"]
    assert time.monotonic() - started < TIMEOUT + 2
    own(url)
