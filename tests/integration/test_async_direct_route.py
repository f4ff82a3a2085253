"""Attacks on the async invoke's direct route (issue 15): a request whose body came whole with
its head is queued without ASGI, and must keep every refusal of the ASGI path, each before
anything is stored. Raw sockets, so that the body surely arrives with the head (direct) or after
it (ASGI)."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import Api, Daemon, running, unique_name
from tests.integration.test_direct_route_attacks import ECHO, answers, exchange, invoke_path, post, request_ids
from tests.integration.test_keys import signed


def async_path(name: str) -> str:
    return f"/v2/default/fgs/functions/{name}/invocations-async"


def pieces_for(route: str, request: bytes, body: bytes) -> list[bytes]:
    """One send (the direct route), or the head and then the body a moment later (ASGI)."""
    if route == "direct" or not body:
        return [request]
    return [request[: -len(body)], request[-len(body) :]]


def events_of(api: Api, name: str) -> list[dict]:
    return api.http.get(f"/functions/{name}/async-invocations", params={"limit": 100}).json()["invocations"]


def wait_settled(api: Api, name: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        events = events_of(api, name)
        if len(events) == count and all(event["status"] == "SUCCESS" for event in events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"the events did not all succeed: {events_of(api, name)}")


def test_pipelined_async_invocations_keep_refusals_order_and_run(api: Api) -> None:
    # One send: a good event, one without a token, one with a wrong token, one for a function
    # that does not exist, one that is not JSON, a sync invocation, a good event again. Each is
    # answered in order, with one X-Request-Id; only the two good events are queued, and they run.
    name = api.deploy(ECHO)["func_name"]
    token = {"X-Auth-Token": api.daemon.token, "Content-Type": "application/json"}
    burst = [
        post(async_path(name), b'{"n": 1}', token),
        post(async_path(name), b'{"n": 2}', {"Content-Type": "application/json"}),
        post(async_path(name), b'{"n": 3}', {"X-Auth-Token": "x" * 40}),
        post(async_path(unique_name("gone")), b'{"n": 4}', token),
        post(async_path(name), b'{"n": ', token),
        post(invoke_path(name), b'{"n": 6}', token),
        post(async_path(name), b'{"n": 7}', token, close=True),
    ]
    got = answers(exchange(api.daemon.port, [b"".join(burst)]))
    assert [status for status, _, _ in got] == [202, 401, 401, 404, 400, 200, 202]
    for status, headers, body in got:
        assert len(request_ids(headers)) == 1, headers
        assert dict(headers)["content-type"] == "application/json"
        if status == 202:
            # The event's id, in the body, in X-Cff-Request-Id and in X-Request-Id.
            assert request_ids(headers) == [dict(headers)["x-cff-request-id"]] == [json.loads(body)["request_id"]]
        elif status != 200:
            assert json.loads(body)["error_code"].startswith("FSS."), body
    codes = [json.loads(body).get("error_code") for _, _, body in got]
    assert codes[1:5] == ["FSS.0401", "FSS.0401", "FSS.0404", "FSS.0400"], codes
    assert json.loads(got[5][2]) == {"n": 6}
    queued = {json.loads(got[0][2])["request_id"], json.loads(got[6][2])["request_id"]}
    assert {event["request_id"] for event in wait_settled(api, name, 2)} == queued


@pytest.mark.parametrize("route", ["direct", "asgi"])
def test_payload_and_queue_limits_hold_on_either_route(tmp_path, route: str) -> None:
    config = "[async_invoke]\nmax_payload = 64\nmax_queued = 2\n"
    with running(tmp_path / "state", config) as daemon:
        api = Api(daemon)
        # Disabled, so its events wait: the queue fills.
        name = api.deploy(ECHO, strategy_config={"concurrency": 0})["func_name"]
        token = {"X-Auth-Token": daemon.token}
        large = b'{"pad": "' + b"x" * 100 + b'"}'
        statuses = []
        for body in (b'{"n": 1}', large, b'{"n": 2}', b'{"n": 3}'):
            request = post(async_path(name), body, token, close=True)
            ((status, got, answer),) = answers(exchange(daemon.port, pieces_for(route, request, body), pause=0.05))
            statuses.append(status)
            assert len(request_ids(got)) == 1
            if status != 202:
                assert json.loads(answer)["error_code"] in ("FSS.0413", "FSS.0429"), answer
        # Over max_payload: 413; the third waiting event: 429. Neither stored.
        assert statuses == [202, 413, 202, 429]
        assert sorted(event["status"] for event in events_of(api, name)) == ["WAIT", "WAIT"]


def test_the_body_budget_holds_for_async_invocations_on_the_direct_route(tmp_path) -> None:
    with running(tmp_path / "state", "[server]\nmax_body_memory = 64\n") as daemon:
        api = Api(daemon)
        name = api.deploy(ECHO, strategy_config={"concurrency": 0})["func_name"]
        token = {"X-Auth-Token": daemon.token}
        small = post(async_path(name), b'{"n": 1}', token)
        large = post(async_path(name), b'{"n": 2, "pad": "' + b"x" * 100 + b'"}', token, close=True)
        got = answers(exchange(daemon.port, [small + large]))
        # Over the budget of bodies held at once: 503, as on the ASGI path (fgd.web.front.BodyBudget).
        assert [s for s, _, _ in got] == [202, 503]
        assert json.loads(got[1][2])["error_code"] == "FSS.0503"
        assert [event["request_id"] for event in events_of(api, name)] == [json.loads(got[0][2])["request_id"]]


def test_a_signed_async_invocation_is_checked_whole_on_the_direct_route(daemon: Daemon, api: Api, make_key) -> None:
    key = make_key()
    name = api.deploy(ECHO)["func_name"]
    gone = unique_name("gone")
    event = b'{"n": 11}'
    url, headers = signed(daemon, key, "POST", async_path(name), event)
    path = urlsplit(url).path
    ((status, got, body),) = answers(exchange(daemon.port, [post(path, event, headers, close=True)]))
    assert status == 202, body
    request_id = json.loads(body)["request_id"]
    # The same signature on another event (the body is covered) or another function, even one
    # that does not exist (a wrong signature learns nothing of which functions exist: 401, not 404).
    for target, other in [(path, b'{"n": 12}'), (path.replace(name, gone), event)]:
        ((status, got, answer),) = answers(exchange(daemon.port, [post(target, other, headers, close=True)]))
        assert status == 401, (target, answer)
        assert json.loads(answer)["error_code"] == "FSS.0401"
        assert len(request_ids(got)) == 1
    assert [event["request_id"] for event in wait_settled(api, name, 1)] == [request_id]
