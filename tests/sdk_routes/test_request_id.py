"""X-Request-Id on every answer of the API listener and the gateway, errors included."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api, Daemon, read_head, running, unique_name

ECHO = "def handler(event, context):\n    return event\n"
SHAPED = """
def handler(event, context):
    return {"statusCode": 200, "headers": {"X-Request-Id": "chosen-by-the-function"}, "body": "hi"}
"""


@pytest.fixture(scope="module")
def quick_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose API gives up on a stalled body after 1 s (the listener's own 408)."""
    with running(tmp_path_factory.mktemp("fgd-rid") / "state", "[server]\nbody_timeout = 1.0\n") as d:
        yield d


@pytest.fixture(scope="module")
def rid_api(quick_daemon: Daemon) -> Api:
    return Api(quick_daemon)


def request_id(response: httpx.Response) -> str:
    values = response.headers.get_list("x-request-id")
    assert len(values) == 1, response.headers
    uuid.UUID(values[0])
    return values[0]


def test_every_api_answer_has_a_fresh_request_id(rid_api: Api, quick_daemon: Daemon) -> None:
    answers = [
        rid_api.http.get("/functions"),
        rid_api.http.get("/functions"),
        rid_api.http.get("/functions/nosuchfunction/config"),  # 404
        rid_api.http.get("/functions", params={"maxitems": "-1"}),  # 400
        rid_api.http.patch("/functions"),  # 405
        httpx.get(f"{quick_daemon.url}/v2/default/fgs/functions"),  # 401, no token
        httpx.get(f"{quick_daemon.url}/healthz"),
        httpx.get(f"{quick_daemon.url}/nowhere"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 400, 405, 401, 200, 404]
    ids = [request_id(a) for a in answers]
    assert len(set(ids)) == len(ids)


def test_invocation_request_id_is_the_cff_request_id(rid_api: Api) -> None:
    name = rid_api.deploy(ECHO)["func_name"]
    answer = rid_api.invoke(name, {"a": 1})
    assert answer.status_code == 200
    assert request_id(answer) == answer.headers["x-cff-request-id"]
    refused = rid_api.http.post(f"/functions/{name}/invocations", content=b"not json")
    assert refused.status_code == 400 and request_id(refused)
    queued = rid_api.http.post(f"/functions/{name}/invocations-async", json={"b": 2})
    assert queued.status_code == 202
    assert request_id(queued) == queued.json()["request_id"]


def test_gateway_answers_have_one_request_id_of_the_gateway(rid_api: Api, quick_daemon: Daemon) -> None:
    name = rid_api.deploy(SHAPED)["func_name"]
    path = f"/rid-{unique_name()}"
    assert rid_api.route(name, path).status_code == 201
    answer = httpx.get(f"{quick_daemon.gateway_url}{path}")
    assert answer.status_code == 200 and answer.text == "hi"
    # The function's own X-Request-Id is replaced by the invocation's id.
    assert request_id(answer) == answer.headers["x-cff-request-id"] != "chosen-by-the-function"
    missing = httpx.get(f"{quick_daemon.gateway_url}/no-such-route-{unique_name()}")
    assert missing.status_code == 404 and request_id(missing)


def test_the_listeners_own_timeout_answer_has_a_request_id(quick_daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", quick_daemon.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/default/fgs/functions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Auth-Token: " + quick_daemon.token.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = read_head(sock)
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 408")
    ids = [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.startswith("x-request-id:")]
    assert len(ids) == 1
    uuid.UUID(ids[0])
