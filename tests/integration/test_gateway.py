"""APIG triggers: HTTP routes on the gateway listener, FunctionGraph's APIG event and response."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.parse

import httpx
import pytest

from tests.conftest import Api, running

ECHO = """
import base64, json

def handler(event, context):
    body = base64.b64decode(event["body"]).decode() if event["isBase64Encoded"] else event["body"]
    if event["path"].endswith("/bad"):
        return {"status": "not an APIG response"}
    if event["path"].endswith("/crash"):
        raise ValueError("boom")
    payload = {"event": {k: v for k, v in event.items() if k != "body"}, "body": body}
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Echo": "yes"},
        "body": base64.b64encode(json.dumps(payload).encode()).decode(),
        "isBase64Encoded": True,
    }
"""


def test_round_trip_with_base64_body_headers_and_query(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    assert api.route(name, f"/hello-{name}").status_code == 201
    response = httpx.post(
        f"{api.daemon.gateway_url}/hello-{name}/sub?lang=en&x=1",
        content=json.dumps({"name": "fgd"}),
        headers={"Content-Type": "application/json", "X-Custom": "c"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["x-echo"] == "yes"
    assert response.headers["x-cff-request-id"]
    payload = response.json()
    assert json.loads(payload["body"]) == {"name": "fgd"}
    event = payload["event"]
    assert event["isBase64Encoded"] is True
    assert event["httpMethod"] == "POST"
    assert event["path"] == f"/hello-{name}/sub"
    assert event["queryStringParameters"] == {"lang": "en", "x": "1"}
    assert event["headers"]["x-custom"] == "c" and event["headers"]["content-type"] == "application/json"
    assert event["pathParameters"] == {}
    assert set(event["requestContext"]) == {"apiId", "requestId", "stage"}
    assert event["requestContext"]["requestId"] == response.headers["x-cff-request-id"]


def test_normal_match_is_exact_and_methods_filter(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    api.route(name, f"/exact-{name}", match_mode="NORMAL", req_method="GET")
    assert httpx.get(f"{api.daemon.gateway_url}/exact-{name}").status_code == 201
    assert httpx.get(f"{api.daemon.gateway_url}/exact-{name}/more").status_code == 404
    assert httpx.post(f"{api.daemon.gateway_url}/exact-{name}").status_code == 404


def test_token_auth(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    api.route(name, f"/private-{name}", auth="TOKEN")
    url = f"{api.daemon.gateway_url}/private-{name}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": "wrong"}).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": api.daemon.token}).status_code == 201


def test_bad_result_and_failed_function_are_502(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    api.route(name, f"/p-{name}")
    bad = httpx.get(f"{api.daemon.gateway_url}/p-{name}/bad")
    assert bad.status_code == 502
    assert "not an APIG response" in bad.json()["error_msg"]
    crash = httpx.get(f"{api.daemon.gateway_url}/p-{name}/crash")
    assert crash.status_code == 502
    assert "ValueError: boom" in crash.json()["error_msg"]


def test_routes_conflict_and_body_limit(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    assert api.route(name, f"/taken-{name}").status_code == 201
    conflict = api.route(name, f"/taken-{name}", req_method="GET")
    assert conflict.status_code == 409
    big = httpx.post(f"{api.daemon.gateway_url}/taken-{name}", content=b"x" * (4 * 1024 * 1024 + 1))
    assert big.status_code == 413
    assert httpx.get(f"{api.daemon.gateway_url}/nothing-here").status_code == 404
    assert api.route(name, "no-slash").status_code == 400


def test_plain_body_result(api: Api) -> None:
    source = (
        "def handler(e, c):\n"
        "    return {'statusCode': 200, 'body': 'plain text', 'headers': {'Content-Type': 'text/plain'}}\n"
    )
    name = api.deploy(source)["func_name"]
    api.route(name, f"/plain-{name}")
    response = httpx.get(f"{api.daemon.gateway_url}/plain-{name}")
    assert response.status_code == 200 and response.text == "plain text"
    assert response.headers["content-type"] == "text/plain"


# -- hostile responses: a function's result never breaks the HTTP layer -------------------------

# The function answers with whatever the query asks: ?status=<JSON> and ?headers=<JSON object>.
SHAPED = """
import json

def handler(event, context):
    query = event["queryStringParameters"]
    return {
        "statusCode": json.loads(query.get("status", "200")),
        "headers": json.loads(query.get("headers", "{}")),
        "body": query.get("body", "shaped"),
    }
"""


def shaped_route(api: Api) -> str:
    name = api.deploy(SHAPED)["func_name"]
    assert api.route(name, f"/shaped-{name}").status_code == 201
    return f"{api.daemon.gateway_url}/shaped-{name}"


def assert_still_serving(api: Api, url: str) -> None:
    """The daemon answers its health check and a well-formed gateway call after the hostile one."""
    assert httpx.get(f"{api.daemon.url}/healthz", timeout=5).status_code == 200
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.text == "shaped", response.text


@pytest.mark.parametrize(
    "status",
    [
        "101",
        "100",
        "103",
        "199",
        "0",
        "-1",
        "600",
        "99999999999999999999999",
        "true",
        "false",
        '"200"',
        "200.0",
        "null",
    ],
)
def test_status_that_is_not_a_final_http_status_is_502(api: Api, status: str) -> None:
    url = shaped_route(api)
    response = httpx.get(url, params={"status": status}, timeout=10)
    assert response.status_code == 502, response.text
    assert response.json()["error_code"] == "FSS.0502"
    assert "statusCode" in response.json()["error_msg"]
    assert_still_serving(api, url)


def test_hop_by_hop_and_framing_headers_from_the_function_are_dropped(api: Api) -> None:
    url = shaped_route(api)
    hostile = {
        "Content-Length": "1",
        "Transfer-Encoding": "chunked",
        "Connection": "close, X-Private",
        "Keep-Alive": "timeout=1",
        "Upgrade": "websocket",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authenticate": "Basic",
        "Proxy-Connection": "close",
        "X-Private": "listed in Connection, so hop-by-hop",
        "X-Kept": "yes",
        "Set-Cookie": ["a=1", "b=2"],
    }
    with httpx.Client(timeout=10) as client:
        response = client.get(url, params={"headers": json.dumps(hostile), "body": "twelve bytes"})
        assert response.status_code == 200, response.text
        assert response.text == "twelve bytes"
        assert response.headers.get_list("content-length") == ["12"]
        for name in ("transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "x-private"):
            assert name not in response.headers, name
        assert not [name for name in response.headers if name.startswith("proxy-")]
        assert response.headers["x-kept"] == "yes"
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
        # The function's "Connection: close" did not end the connection: the next request uses it.
        again = client.get(url)
        assert again.status_code == 200 and again.text == "shaped"
    assert_still_serving(api, url)


def test_a_function_header_value_is_trimmed_and_its_date_is_the_daemons_alone(api: Api) -> None:
    # was: " padded " made the whole answer a 500 (not valid HTTP as sent), and a function's own
    # Date (an HTTP function's server sends one) went out beside the daemon's.
    url = shaped_route(api)
    headers = {"X-Padded": " \tpadded value \t", "Date": "Mon, 01 Jan 2001 00:00:00 GMT", "X-Kept": "yes"}
    with httpx.Client(timeout=10) as client:
        response = client.get(url, params={"headers": json.dumps(headers)})
    assert response.status_code == 200, response.text
    assert response.headers["x-padded"] == "padded value"
    assert len(response.headers.get_list("date")) == 1 and "2001" not in response.headers["date"]
    assert response.headers["x-kept"] == "yes"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A\r\nX-Injected": "1"},
        {"X-A": "v\r\nX-Injected: 1"},
        {"X-A": "line\nfeed"},
        {"X-A": "carriage\rreturn"},
        {"X-A": "nul\u0000byte"},
        {"X-A": "escape\u001b[31m"},
        {"X-A": ["fine", "bad\r\n"]},
        {"Bad Name": "1"},
        {"X-A:": "1"},
        {"": "empty name"},
        {"X-\u00e9": "non-token name"},
    ],
)
def test_header_that_is_not_valid_http_is_502(api: Api, headers: dict) -> None:
    url = shaped_route(api)
    response = httpx.get(url, params={"headers": json.dumps(headers)}, timeout=10)
    assert response.status_code == 502, response.text
    assert "x-injected" not in response.headers
    message = response.json()["error_msg"]
    assert "header" in message and ("control character" in message or "not an HTTP token" in message)
    assert_still_serving(api, url)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_send_no_body(api: Api, status: int) -> None:
    url = shaped_route(api)
    with httpx.Client(timeout=10) as client:
        response = client.get(url, params={"status": str(status), "body": "ignored"})
        assert response.status_code == status
        assert response.content == b""
        assert "content-length" not in response.headers
        assert client.get(url).text == "shaped"
    assert_still_serving(api, url)


def test_admin_token_never_reaches_the_function(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    api.route(name, f"/tok-{name}", auth="TOKEN")
    api.route(name, f"/pub-{name}")
    token = api.daemon.token
    for path, sent in [
        (f"/tok-{name}", {"X-Auth-Token": token}),
        (f"/tok-{name}", {"Authorization": f"Bearer {token}"}),
        (f"/tok-{name}", {"X-Auth-Token": token, "Authorization": f"bearer  {token}"}),
        (f"/pub-{name}", {"X-Auth-Token": token, "X-Other": "kept"}),
    ]:
        response = httpx.get(f"{api.daemon.gateway_url}{path}", headers=sent, timeout=10)
        assert response.status_code == 201, response.text
        seen = response.json()["event"]["headers"]
        assert "x-auth-token" not in seen and "authorization" not in seen, (path, seen)
        assert token not in response.text
    # The caller's own credentials for its function (not the node's token) pass through.
    response = httpx.get(
        f"{api.daemon.gateway_url}/pub-{name}",
        headers={"Authorization": "Basic dXNlcjpwdw==", "X-Auth-Token": "the app's own"},
        timeout=10,
    )
    seen = response.json()["event"]["headers"]
    assert seen["authorization"] == "Basic dXNlcjpwdw==" and seen["x-auth-token"] == "the app's own"


# -- the plain path (fgd.web.plain): trigger routes answered without h11 ---------------------------


def exchange_closed(port: int, *pieces: bytes) -> bytes:
    """The pieces of a request (a pause between them), then a request asking for a close (so the
    answer is read whole): all that is answered."""
    closing = b"GET /-/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces[:-1]:
            sock.sendall(piece)
            time.sleep(0.05)
        sock.sendall(pieces[-1] + closing)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def blanked(answer: bytes) -> bytes:
    """An answer with what differs between two answers (request ids, dates) blanked."""
    return re.sub(rb"(?im)^(x-request-id|x-cff-request-id|date): .*$", rb"\1: -", answer)


@pytest.mark.parametrize(
    "shape",
    [
        "GET {path}?status=201&headers=%7B%22X-A%22%3A%22b%22%7D HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
        "HEAD {path}?body=abc HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
        "GET {path}?status=204 HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
        "POST {path}/sub?body=%C3%A9 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n{extra}\r\nhello",
        "GET {path}?status=%22x%22 HTTP/1.1\r\nHost: x\r\n{extra}\r\n",  # a 502 of the gateway's own
    ],
)
def test_a_trigger_route_answers_a_plain_request_with_the_bytes_it_answers_through_h11(api: Api, shape: str) -> None:
    """A request of the plain shape reaches the route without h11; the same request with a
    Connection header goes through h11 to the same direct route, and a body sent after its head
    through h11 and the ASGI app: the answers are the same bytes."""
    path = urllib.parse.urlsplit(shaped_route(api)).path
    port = api.daemon.gateway_port
    plain = exchange_closed(port, shape.format(path=path, extra="").encode())
    assert plain.startswith(b"HTTP/1.1 "), plain[:200]
    assert plain.count(b"HTTP/1.1 ") == 2  # the route's answer, then the 404 that closes
    through_h11 = exchange_closed(port, shape.format(path=path, extra="Connection: keep-alive\r\n").encode())
    assert blanked(plain) == blanked(through_h11)
    if shape.startswith("POST"):
        head, _, body = shape.format(path=path, extra="").encode().partition(b"\r\n\r\n")
        through_asgi = exchange_closed(port, head + b"\r\n\r\n", body)
        assert blanked(plain) == blanked(through_asgi)


@pytest.mark.slow
def test_sigterm_waits_for_a_trigger_route_answering_a_plain_request(tmp_path) -> None:
    """Shutdown counts a trigger route's requests answered without ASGI too: the one in flight is
    answered whole (and says close) before the daemon exits."""
    with running(tmp_path / "state") as daemon:
        api = Api(daemon)
        answer_source = "return {'statusCode': 200, 'body': 'x' * 3000000}"
        source = f"import time\ndef handler(e, c):\n    time.sleep(1.0)\n    {answer_source}\n"
        name = api.deploy(source)["func_name"]
        assert api.route(name, f"/slow-{name}").status_code == 201
        with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10) as sock:
            sock.sendall(f"GET /slow-{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.5)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(1 << 20):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
        assert body == b"x" * 3000000
        assert daemon.process.wait(15) == 0
