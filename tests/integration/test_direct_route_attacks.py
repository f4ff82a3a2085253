"""Attacks on the sync invoke's direct route (issue 15): a request whose body came whole with its
head is answered without ASGI, and must keep every guarantee of the ASGI path. Raw sockets, so
that the body surely arrives with the head (direct) or in pieces after it (ASGI)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Api, Daemon, running, unique_name
from tests.integration.test_keys import signed
from tests.integration.test_metrics import scrape

ECHO = "def handler(event, context):\n    print('printed', event.get('n'))\n    return {'n': event.get('n')}\n"


def answers(data: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """The answers in `data` (each framed by its Content-Length): status, headers, body."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        length = int(dict(headers)["content-length"])
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


def post(path: str, body: bytes, headers: dict[str, str], *, close: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Content-Length: {len(body)}"]
    if "Host" not in headers:
        lines.append("Host: 127.0.0.1")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(port: int, pieces: list[bytes], *, pause: float = 0.0, half_close: bool = False) -> bytes:
    """Send `pieces` (pausing between them) on one connection; what comes back until it closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            if pause:
                time.sleep(pause)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def invoke_path(name: str) -> str:
    return f"/v2/default/fgs/functions/{name}/invocations"


def request_ids(headers: list[tuple[str, str]]) -> list[str]:
    return [v for n, v in headers if n == "x-request-id"]


def test_pipelined_direct_invocations_keep_auth_errors_and_order(api: Api) -> None:
    # One send: a good invocation, one without a token, one with a wrong token, one of a function
    # that does not exist, a good one again. Each is answered, in order, the refusals as JSON
    # errors with one X-Request-Id, and the connection carries them all.
    name = api.deploy(ECHO)["func_name"]
    token = {"X-Auth-Token": api.daemon.token, "Content-Type": "application/json"}
    burst = [
        post(invoke_path(name), b'{"n": 1}', token),
        post(invoke_path(name), b'{"n": 2}', {"Content-Type": "application/json"}),
        post(invoke_path(name), b'{"n": 3}', {"X-Auth-Token": "x" * 40}),
        post(invoke_path(unique_name("gone")), b'{"n": 4}', token),
        post(invoke_path(name), b'{"n": 5}', token, close=True),
    ]
    got = answers(exchange(api.daemon.port, [b"".join(burst)]))
    assert [status for status, _, _ in got] == [200, 401, 401, 404, 200]
    assert json.loads(got[0][2]) == {"n": 1} and json.loads(got[4][2]) == {"n": 5}
    for status, headers, body in got:
        assert len(request_ids(headers)) == 1, headers
        if status != 200:
            assert dict(headers)["content-type"] == "application/json"
            assert json.loads(body)["error_code"] in ("FSS.0401", "FSS.1051", "FSS.0404")
        else:
            # An invocation's X-Request-Id is its X-Cff-Request-Id.
            assert request_ids(headers) == [dict(headers)["x-cff-request-id"]]


def test_a_head_in_tiny_pieces_then_half_closed_is_answered(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    request = post(invoke_path(name), b'{"n": 7}', {"X-Auth-Token": api.daemon.token})
    # Byte by byte for the head's first part, the rest with the body: the last piece holds the
    # body whole with the end of the head (the direct route), and the client then half-closes.
    head_end = request.index(b"\r\n\r\n")
    pieces = [request[i : i + 1] for i in range(60)] + [request[60:]]
    (answer,) = answers(exchange(api.daemon.port, pieces, pause=0.002, half_close=True))
    assert answer[0] == 200 and json.loads(answer[2]) == {"n": 7}
    assert head_end > 60


def test_log_tail_v1_and_instance_memory_hold_on_the_direct_route(api: Api) -> None:
    name = api.deploy(ECHO, enable_dynamic_memory=True)["func_name"]
    headers = {
        "X-Auth-Token": api.daemon.token,
        "X-Cff-Log-Type": "TAIL",
        "X-Cff-Request-Version": "v1",
        "X-Cff-Instance-Memory": "256",
    }
    ((status, got, body),) = answers(
        exchange(api.daemon.port, [post(invoke_path(name), b'{"n": 9}', headers, close=True)])
    )
    assert status == 200, body
    named = dict(got)
    assert "printed 9" in base64.b64decode(named["x-cff-function-log"]).decode()
    v1 = json.loads(body)
    assert v1["status"] == 200 and json.loads(v1["result"]) == {"n": 9} and "printed 9" in v1["log"]
    assert v1["request_id"] == named["x-cff-request-id"]
    assert json.loads(named["x-cff-invoke-summary"])["memorySize"] == 256
    # A memory size that is not one: refused as on the ASGI path.
    headers["X-Cff-Instance-Memory"] = "12345"
    ((status, got, body),) = answers(exchange(api.daemon.port, [post(invoke_path(name), b"{}", headers, close=True)]))
    assert status == 400 and json.loads(body)["error_code"] == "FSS.0406"
    assert len(request_ids(got)) == 1


def test_a_signed_invocation_with_a_query_and_escapes_is_checked_on_the_direct_route(
    daemon: Daemon, api: Api, make_key
) -> None:
    key = make_key()
    urn = api.deploy(ECHO)["func_urn"]
    other = api.deploy(ECHO)["func_urn"]
    event = b'{"n": 11}'
    # The function's URN in the path (its colons sent escaped) and a query: both under the signature.
    url, headers = signed(daemon, key, "POST", invoke_path(urn), event, query=[("x", "a b")])
    target = urlsplit(url)
    escaped = target.path.replace(":", "%3A") + "?" + target.query
    good = answers(exchange(daemon.port, [post(escaped, event, headers, close=True)]))
    assert [s for s, _, _ in good] == [200], good
    assert json.loads(good[0][2]) == {"n": 11}
    # The same signature on another event (the body is covered), another query, another function.
    for target_path, body in [
        (escaped, b'{"n": 12}'),
        (escaped.replace("a%20b", "a%20c"), event),
        (escaped.replace(urn.replace(":", "%3A"), other.replace(":", "%3A")), event),
    ]:
        ((status, got, answer),) = answers(exchange(daemon.port, [post(target_path, body, headers, close=True)]))
        assert status == 401, (target_path, answer)
        assert json.loads(answer)["error_code"] == "FSS.0401"
        assert len(request_ids(got)) == 1


SPACED = """
def handler(event, context):
    raise type(event["name"], (Exception,), {})("hostile")
"""


@pytest.mark.parametrize("route", ["direct", "asgi"])
def test_an_error_type_with_edge_spaces_is_the_functions_error_not_a_500(api: Api, route: str) -> None:
    # A class name may be anything: "  Boom  " is a header value with edge whitespace, which the
    # server refuses to send (it would answer 500 in place of the function's error).
    name = api.deploy(SPACED)["func_name"]
    event = json.dumps({"name": "  Boom  "}).encode()
    token = {"X-Auth-Token": api.daemon.token}
    if route == "direct":
        pieces = [post(invoke_path(name), event, token, close=True)]
    else:
        # The head, then the body a moment later: read through the ASGI route.
        whole = post(invoke_path(name), event, token, close=True)
        pieces = [whole[: -len(event)], whole[-len(event) :]]
    ((status, got, body),) = answers(exchange(api.daemon.port, pieces, pause=0.05))
    assert status == 200, body
    named = dict(got)
    assert named["x-is-func-err"] == "true"
    assert named["x-func-err-code"] == "Boom"
    assert json.loads(body)["errorType"] == "  Boom  "


def test_the_body_budget_holds_on_the_direct_route(tmp_path) -> None:

    with running(tmp_path / "state", "[server]\nmax_body_memory = 64\n") as daemon:
        api = Api(daemon)
        name = api.deploy(ECHO)["func_name"]
        token = {"X-Auth-Token": daemon.token}
        small = post(invoke_path(name), b'{"n": 1}', token)
        large = post(invoke_path(name), b'{"n": 2, "pad": "' + b"x" * 100 + b'"}', token, close=True)
        got = answers(exchange(daemon.port, [small + large]))
        # Over the budget of bodies held at once: 503, as on the ASGI path (fgd.web.front.BodyBudget).
        assert [s for s, _, _ in got] == [200, 503]
        assert json.loads(got[1][2])["error_code"] == "FSS.0503"
        assert len(request_ids(got[1][1])) == 1


@pytest.mark.slow
def test_sigterm_during_a_direct_invocation_lets_it_finish(tmp_path) -> None:

    with running(tmp_path / "state") as daemon:
        api = Api(daemon)
        name = api.deploy("import time\ndef handler(e, c):\n    time.sleep(1.5)\n    return 'done'\n")["func_name"]
        api.invoke(name)  # warm, so the next one is all in the handler's sleep
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(post(invoke_path(name), b"{}", {"X-Auth-Token": daemon.token}, close=True))
            time.sleep(0.5)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        ((status, _, body),) = answers(answer)
        assert status == 200 and body == b"done"
        assert daemon.process.wait(15) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{daemon.url}/healthz", timeout=1)


# The flood's client, in a process of its own: a thread of the test's process would hold the GIL
# while it counts answers, and the test's own requests would wait for it (5 ms at each switch),
# which measured the test, not the daemon. Prints how many were refused so far each time the count
# passes a multiple of 1,000 (a read may bring several answers: 1,004 rather than 1,000).
FLOOD = r"""
import socket, sys, threading
port, count = int(sys.argv[1]), int(sys.argv[2])
one = sys.stdin.buffer.read()
sock = socket.create_connection(("127.0.0.1", port))
sock.settimeout(5)
threading.Thread(target=sock.sendall, args=(one * count,), daemon=True).start()
refused, tail = 0, b""
while refused < count:
    try:
        chunk = sock.recv(1 << 20)
    except TimeoutError:
        break
    if not chunk:
        break
    # (A status line may be split between two reads.)
    counted = (tail + chunk).count(b"HTTP/1.1 401")
    tail = chunk[-11:]  # shorter than a status line: none counted twice
    if (refused + counted) // 1000 > refused // 1000:
        print(refused + counted, flush=True)
    refused += counted
"""


def test_a_client_flooding_pipelined_refusals_does_not_keep_the_daemon_from_others(api: Api) -> None:
    # 20,000 invocations with a wrong token, pipelined on one connection as fast as the daemon
    # answers them (each refused at once, by the direct route): health and a real invocation on
    # other connections are answered promptly, while the flood is, not after it.
    # The rounds use raw sockets: an httpx client costs the test 30-50 ms of its own CPU a round,
    # which a loaded machine stretched past any fixed bar, whatever the daemon did.
    name = api.deploy(ECHO)["func_name"]
    api.invoke(name, {"n": 0})
    port = api.daemon.port
    one = post(invoke_path(name), b'{"n": 1}', {"X-Auth-Token": "y" * 40})
    good = post(invoke_path(name), b'{"n": 2}', {"X-Auth-Token": api.daemon.token}, close=True)
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(port), "20000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    flood.stdin.write(one)
    flood.stdin.close()
    rounds = []
    try:
        first = flood.stdout.readline()
        assert 1000 <= int(first) < 20000, first  # the flood is being answered, not over
        for _ in range(20):
            began = time.monotonic()
            assert [status for status, _, _ in answers(exchange(port, [health]))] == [200]
            assert [(status, json.loads(body)) for status, _, body in answers(exchange(port, [good]))] == [
                (200, {"n": 2})
            ]
            rounds.append(time.monotonic() - began)
        flooding = flood.poll() is None
    finally:
        flood.terminate()
        printed = flood.stdout.read().split()
        flood.wait(timeout=15)
    # A daemon kept from others would answer them only after the flood (1.7 s alone): the rounds
    # (2-16 ms each, also beside two CPU hogs) would end after it, each taking hundreds of ms.
    assert flooding and int(printed[-1] if printed else first) < 20000, printed[-1:]
    assert sorted(rounds)[len(rounds) // 2] < 0.1, rounds


def test_a_partial_next_head_is_held_to_header_timeout_not_keep_alive(tmp_path) -> None:
    config = "[server]\nheader_timeout = 1.0\nkeep_alive_timeout = 20.0\n"
    with running(tmp_path / "state", config) as daemon:
        api = Api(daemon)
        name = api.deploy(ECHO)["func_name"]
        first = post(invoke_path(name), b'{"n": 1}', {"X-Auth-Token": daemon.token})
        second = post(invoke_path(name), b'{"n": 2}', {"X-Auth-Token": daemon.token})
        began = time.monotonic()
        # The first request whole, then the start of the next one's head, which never ends.
        got = answers(exchange(daemon.port, [first + second[:30]]))
        assert [s for s, _, _ in got] == [200]
        assert time.monotonic() - began < 5


def test_metrics_count_direct_invocations(api: Api) -> None:
    source = "def handler(e, c):\n    if e.get('fail'):\n        raise ValueError('x')\n    return 1\n"
    name = api.deploy(source)["func_name"]
    disabled = api.deploy(source, strategy_config={"concurrency": 0})["func_name"]
    token = {"X-Auth-Token": api.daemon.token}
    burst = [post(invoke_path(name), b"{}", token) for _ in range(3)]
    burst += [post(invoke_path(name), b'{"fail": true}', token), post(invoke_path(disabled), b"{}", token, close=True)]
    got = answers(exchange(api.daemon.port, [b"".join(burst)]))
    assert [s for s, _, _ in got] == [200, 200, 200, 200, 429]
    assert json.loads(got[4][2])["error_code"] == "FSS.0429"
    values = scrape(api.daemon)
    label = f'function="default/default:{name}"'
    assert values[f'fgd_invocations_total{{{label},outcome="success"}}'] == 3
    assert values[f'fgd_invocations_total{{{label},outcome="function_error"}}'] == 1
    assert values[f"fgd_cold_starts_total{{{label}}}"] == 1
    assert values[f'fgd_throttles_total{{function="default/default:{disabled}",reason="throttled"}}'] == 1


@pytest.mark.slow
@pytest.mark.parametrize("route", ["plain", "direct", "asgi"])
def test_sigterm_during_an_invocation_with_a_large_answer_delivers_all_of_it(tmp_path, route: str) -> None:
    # The answer does not fit the socket's buffers: writing it takes several rounds, and shutdown
    # must wait for them as it does for the invocation itself. "plain": read and answered without
    # h11 (fgd.web.plain), with a second request behind it in the same read that is not served,
    # as the answer's `Connection: close` says; "direct": the same route through h11 (the request
    # asks for a close); "asgi": the body comes a moment after the head.
    size = 5_000_000
    with running(tmp_path / "state") as daemon:
        api = Api(daemon)
        source = f"import time\ndef handler(e, c):\n    time.sleep(1.0)\n    return 'x' * {size}\n"
        name = api.deploy(source)["func_name"]
        api.invoke(name)  # warm, so the next one is all in the handler's sleep
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            request = post(invoke_path(name), b"{}", {"X-Auth-Token": daemon.token}, close=route != "plain")
            if route == "asgi":
                sock.sendall(request[:-2])
                time.sleep(0.05)
                sock.sendall(request[-2:])
            else:
                sock.sendall(request + request if route == "plain" else request)
            time.sleep(0.5)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(1 << 20):
                answer += chunk
        ((status, headers, body),) = answers(answer)
        assert status == 200
        assert len(body) == size
        assert dict(headers)["connection"] == "close"
        assert daemon.process.wait(15) == 0
        assert "Traceback" not in daemon.log()
