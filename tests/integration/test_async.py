"""Asynchronous invocation: durable queue, retries, age limit, cancel, status, and kill -9 recovery."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, Daemon, running

FLAKY = """
import json, os

def handler(event, context):
    if event.get("fail"):
        raise RuntimeError("failed on purpose")
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    return {"ok": event.get("n")}
"""


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running(
        tmp_path_factory.mktemp("async") / "state", "[async_invoke]\nretry_base = 0.05\nconcurrency = 4\n"
    ) as daemon:
        yield Api(daemon)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP endpoint collecting the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def submit(api: Api, name: str, event: dict) -> str:
    response = api.http.post(f"/functions/{name}/invocations-async", json=event)
    assert response.status_code == 202, response.text
    return response.json()["request_id"]


def status(api: Api, name: str, request_id: str) -> dict:
    rows = api.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
    return rows["invocations"][0]


def wait_final(api: Api, name: str, request_id: str, within: float = 15) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        row = status(api, name, request_id)
        if row["status"] in ("SUCCESS", "FAIL", "DISCARD"):
            return row
        time.sleep(0.05)
    raise AssertionError(f"{request_id} still {row['status']}")


def test_accepted_event_runs_to_success(fast: Api) -> None:
    name = fast.deploy(FLAKY)["func_name"]
    request_id = submit(fast, name, {"n": 1})
    row = wait_final(fast, name, request_id)
    assert row["status"] == "SUCCESS" and row["attempts"] == 1
    assert row["start_time"] and row["end_time"] and row["error_code"] == 0
    logs = fast.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    assert any("Finish Invoke" in line["message"] for line in logs)


def test_function_errors_are_retried_then_fail(fast: Api) -> None:
    name = fast.deploy(FLAKY)["func_name"]
    fast.http.put(f"/functions/{name}/async-invoke-config", json={"max_async_retry_attempts": 3})
    row = wait_final(fast, name, submit(fast, name, {"fail": True}))
    assert row["status"] == "FAIL"
    assert row["attempts"] == 4  # the first try and 3 retries
    # error_code is FunctionGraph's integer (1: the function failed); error_type says how.
    assert row["error_code"] == 1 and row["error_type"] == "RuntimeError" and "on purpose" in row["error_message"]


def test_zero_retries(fast: Api) -> None:
    name = fast.deploy(FLAKY)["func_name"]
    fast.http.put(f"/functions/{name}/async-invoke-config", json={"max_async_retry_attempts": 0})
    assert wait_final(fast, name, submit(fast, name, {"fail": True}))["attempts"] == 1


def test_events_past_their_age_are_discarded(fast: Api) -> None:
    name = fast.deploy(FLAKY, strategy_config={"concurrency": 1})["func_name"]
    fast.http.put(
        f"/functions/{name}/async-invoke-config",
        json={"max_async_event_age_in_seconds": 1, "max_async_retry_attempts": 8},
    )
    row = wait_final(fast, name, submit(fast, name, {"fail": True}), within=20)
    assert row["status"] == "DISCARD"
    assert "max_async_event_age_in_seconds" in row["error_message"]


def test_cancel_a_waiting_event(fast: Api) -> None:
    name = fast.deploy(FLAKY, strategy_config={"concurrency": 0})["func_name"]  # disabled: it waits, throttled
    request_id = submit(fast, name, {"n": 2})
    # It goes back and forth between WAIT and a throttled attempt; cancel lands on a WAIT.
    deadline = time.monotonic() + 5
    while True:
        response = fast.http.post(f"/functions/{name}/cancel", json={"request_id": request_id})
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert response.status_code == 409
    assert response.status_code == 200 and response.json()["status"] == "DISCARD"
    time.sleep(0.3)
    row = status(fast, name, request_id)
    assert row["status"] == "DISCARD" and row["error_message"] == "cancelled"
    assert row["attempts"] == 0  # throttling never used up an attempt
    assert fast.http.post(f"/functions/{name}/cancel", json={"request_id": request_id}).status_code == 409
    assert fast.http.post(f"/functions/{name}/cancel", json={"request_id": "nope"}).status_code == 404


def test_payload_limit_and_validation(fast: Api) -> None:
    name = fast.deploy(FLAKY)["func_name"]
    big = fast.http.post(f"/functions/{name}/invocations-async", json={"x": "y" * 300_000})
    assert big.status_code == 413 and big.json()["error_code"] == "FSS.0413"
    bad = fast.http.post(f"/functions/{name}/invocations-async", content=b"{nope")
    assert bad.status_code == 400
    for body in ({"max_async_retry_attempts": 9}, {"max_async_event_age_in_seconds": 0}, {"what": 1}):
        assert fast.http.put(f"/functions/{name}/async-invoke-config", json=body).status_code == 400
    config = fast.http.get(f"/functions/{name}/async-invoke-config").json()
    assert config["max_async_retry_attempts"] == 1 and config["max_async_event_age_in_seconds"] == 3600


def test_a_thousand_events_all_succeed(fast: Api) -> None:
    name = fast.deploy(FLAKY, strategy_config={"concurrency": 4, "concurrent_num": 4})["func_name"]
    ids = [submit(fast, name, {"n": n}) for n in range(1000)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = fast.http.get(f"/functions/{name}/async-invocations", params={"limit": 1000}).json()["invocations"]
        if sum(r["status"] == "SUCCESS" for r in rows) == len(ids):
            break
        time.sleep(0.2)
    assert {r["request_id"] for r in rows if r["status"] == "SUCCESS"} == set(ids)


def test_kill_9_loses_nothing(tmp_path: Path) -> None:
    with webhook_receiver() as (url, notes):
        _kill_9_loses_nothing(tmp_path, url, notes)


def _kill_9_loses_nothing(tmp_path: Path, url: str, notes: list[dict]) -> None:
    daemon = Daemon(tmp_path / "state", "[async_invoke]\nretry_base = 0.05\nconcurrency = 4\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(FLAKY, timeout=10, strategy_config={"concurrency": 4, "concurrent_num": 2})["func_name"]
        hook = {"destination_config": {"on_success": {"destination": "WEBHOOK", "param": {"url": url}}}}
        api.http.put(f"/functions/{name}/async-invoke-config", json=hook)
        ids = [submit(api, name, {"n": n, "sleep": 0.02}) for n in range(300)]
        time.sleep(0.5)  # some have run, some are running, most are waiting
        daemon.stop(signal.SIGKILL)
        assert 0 < len(notes) < len(ids)
        daemon.start()
        api = Api(daemon)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = api.http.get(f"/functions/{name}/async-invocations", params={"limit": 1000}).json()["invocations"]
            received = {note["request_context"]["request_id"] for note in notes}
            if received == set(ids) and all(r["status"] == "SUCCESS" for r in rows):
                break
            time.sleep(0.2)
        assert sorted(r["request_id"] for r in rows) == sorted(ids)
        assert all(r["status"] == "SUCCESS" for r in rows)
        assert received == set(ids)  # every one reached its destination (at least once)
    finally:
        daemon.stop()


PRINTER = "import json\ndef handler(event, context):\n    print('GOT ' + json.dumps(event))\n    return 'noted'\n"
NOTIFICATION_KEYS = {"timestamp", "request_context", "request_payload", "response_context", "response_payload"}


def test_on_success_destination_function_gets_the_notification(fast: Api) -> None:
    target = fast.deploy(PRINTER)
    source = fast.deploy(FLAKY)["func_name"]
    config = {
        "destination_config": {
            "on_success": {"destination": "FunctionGraph", "param": {"func_urn": target["func_urn"]}}
        }
    }
    assert fast.http.put(f"/functions/{source}/async-invoke-config", json=config).status_code == 200
    request_id = submit(fast, source, {"n": 7})
    wait_final(fast, source, request_id)
    deadline = time.monotonic() + 10
    got: list = []
    while not got and time.monotonic() < deadline:
        logs = fast.http.get(f"/functions/{target['func_name']}/logs").json()["logs"]
        got = [json.loads(line["message"][4:]) for line in logs if line["message"].startswith("GOT ")]
        time.sleep(0.1)
    (note,) = got
    assert set(note) == NOTIFICATION_KEYS
    assert note["request_context"]["request_id"] == request_id
    assert note["request_context"]["function_urn"].endswith(f":{source}:latest")
    assert note["request_context"]["condition"] == ""
    assert note["request_context"]["approximate_invoke_count"] == 1
    assert json.loads(note["request_payload"]) == {"n": 7}
    assert note["response_context"] == {"status_code": 200, "function_error": ""}
    assert json.loads(note["response_payload"]) == {"ok": 7}


def test_on_failure_webhook_gets_the_notification(fast: Api) -> None:
    with webhook_receiver() as (url, received):
        name = fast.deploy(FLAKY)["func_name"]
        hook = {"destination": "WEBHOOK", "param": {"url": url}}
        config = {"max_async_retry_attempts": 1, "destination_config": {"on_failure": hook}}
        assert fast.http.put(f"/functions/{name}/async-invoke-config", json=config).status_code == 200
        request_id = submit(fast, name, {"fail": True})
        wait_final(fast, name, request_id)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        (note,) = received
        assert set(note) == NOTIFICATION_KEYS
        assert note["request_context"]["request_id"] == request_id
        assert note["request_context"]["condition"] == "RetriesExhausted"
        assert note["request_context"]["approximate_invoke_count"] == 2
        assert note["response_context"]["function_error"] == "RuntimeError"
        assert json.loads(note["response_payload"])["errorMessage"] == "failed on purpose"


def test_destination_cycles_and_unknown_targets_are_refused(fast: Api) -> None:
    a = fast.deploy(PRINTER)
    b = fast.deploy(PRINTER)

    def point(source: dict, target_urn: str) -> httpx.Response:
        config = {
            "destination_config": {"on_success": {"destination": "FunctionGraph", "param": {"func_urn": target_urn}}}
        }
        return fast.http.put(f"/functions/{source['func_name']}/async-invoke-config", json=config)

    assert point(a, b["func_urn"]).status_code == 200
    cycle = point(b, a["func_urn"])
    assert cycle.status_code == 400 and "cycle" in cycle.json()["error_msg"]
    assert point(a, a["func_urn"]).status_code == 400
    missing = point(b, a["func_urn"].replace(a["func_name"], "nosuchfn"))
    assert missing.status_code == 400 and "does not exist" in missing.json()["error_msg"]
    bad = {"destination_config": {"on_success": {"destination": "WEBHOOK", "param": {"url": "ftp://x"}}}}
    assert fast.http.put(f"/functions/{b['func_name']}/async-invoke-config", json=bad).status_code == 400


def test_webhook_urls_and_destination_shapes_are_checked_at_the_door(fast: Api) -> None:
    name = fast.deploy(FLAKY)["func_name"]
    field = "destination_config.on_failure.param.url"

    def put(spec: object) -> httpx.Response:
        return fast.http.put(
            f"/functions/{name}/async-invoke-config", json={"destination_config": {"on_failure": spec}}
        )

    for url in [
        "ftp://127.0.0.1/hook",
        "javascript:alert(1)",
        "http://",
        "http:///no-host",
        "http://user:secret@127.0.0.1/hook",
        "http://@127.0.0.1/hook",
        "http://127.0.0.1:99999/hook",
        "http://127.0.0.1:0/hook",
        "http://127.0.0.1:port/hook",
        "http://127.0.0.1:/hook",
        "http://[::1/hook",
        "http://[not-an-ip]/hook",
        "http://-bad-.example/hook",
        "http://a..b/hook",
        "http://exa mple.com/hook",
        "http://127.0.0.1/hook\r\nX-Injected: 1",
        "http://bücher.example/hook",
        "http://127.0.0.1/hook#fragment",
        "http://127.0.0.1/" + "a" * 3000,
        "",
        42,
        None,
    ]:
        response = put({"destination": "WEBHOOK", "param": {"url": url}})
        assert response.status_code == 400, (url, response.text)
        assert field in response.json()["error_msg"], (url, response.json()["error_msg"])
    for spec, words in [
        ({"destination": "SMN", "param": {}}, "destination_config.on_failure.destination"),
        ({"destination": "WEBHOOK", "param": {"url": "http://127.0.0.1/h"}, "extra": 1}, "'extra'"),
        ({"destination": "WEBHOOK", "param": {"url": "http://127.0.0.1/h", "method": "GET"}}, "'method'"),
        ({"destination": "WEBHOOK", "param": "{not json"}, "destination_config.on_failure.param"),
        ({"destination": "WEBHOOK", "param": [1]}, "destination_config.on_failure.param"),
        ("WEBHOOK", "destination_config.on_failure"),
    ]:
        response = put(spec)
        assert response.status_code == 400, (spec, response.text)
        assert words in response.json()["error_msg"], (spec, response.json()["error_msg"])
    assert fast.http.get(f"/functions/{name}/async-invoke-config").json()["destination_config"] == {}
    for url in ["http://127.0.0.1:8080/hook?a=b", "https://[::1]:9443/x", "http://hooks.example.com/p"]:
        assert put({"destination": "WEBHOOK", "param": {"url": url}}).status_code == 200, url
