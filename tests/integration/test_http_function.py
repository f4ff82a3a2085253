"""HTTP functions (`runtime: http`): a server started by `bootstrap` on 127.0.0.1:8000."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import httpx
import pytest

from tests.conftest import Api
from tests.integration.custom_support import HTTP_FILES, deploy, script


def echo_of(response: httpx.Response) -> dict:
    answer = response.json()
    assert answer["statusCode"] == 200, answer
    return json.loads(answer["body"])


def headers_of(echo: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


def test_sync_invocation_with_an_apig_event(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, user_data={"COLOUR": "blue"}, memory_size=256)
    event = {
        "httpMethod": "PUT",
        "path": "/things/1",
        "headers": {"X-Custom": "c", "X-CFF-Request-Id": "forged"},
        "queryStringParameters": {"q": "a b", "n": "1"},
        "body": base64.b64encode(b"\x00\x01binary").decode(),
        "isBase64Encoded": True,
    }
    response = api.invoke(name, event, headers={"X-Cff-Log-Type": "tail"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Is-Func-Err"] == "false"
    answer = response.json()
    assert answer["isBase64Encoded"] is False
    assert answer["headers"]["set-cookie"] == ["a=1", "b=2"]
    assert answer["headers"]["x-server"] == "small"
    echo = json.loads(answer["body"])
    assert echo["method"] == "PUT"
    assert echo["path"] == "/things/1?q=a+b&n=1"
    assert base64.b64decode(echo["body"]) == b"\x00\x01binary"
    headers = headers_of(echo)
    assert headers["x-custom"] == "c"
    # FunctionGraph's headers, not the caller's forgery.
    assert headers["x-cff-request-id"] == response.headers["X-Cff-Request-Id"]
    assert headers["x-cff-func-name"] == name
    assert headers["x-cff-memory"] == "256"
    assert headers["x-cff-timeout"] == "3"
    assert headers["x-cff-func-version"] == "latest"
    assert headers["x-cff-package"] == "default" and headers["x-cff-project-id"] == "default"
    assert headers["x-cff-region"] == "local"
    assert "x-cff-auth-token" not in headers  # no agency
    # User variables are plain environment variables.
    assert echo["env"]["COLOUR"] == "blue"
    assert echo["env"]["RUNTIME_FUNC_NAME"] == name
    log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
    assert "server starting" in log and "Finish Invoke" in log
    summary = json.loads(response.headers["X-Cff-Invoke-Summary"])
    assert summary["coldStart"] is True and summary["memorySize"] == 256
    # A binary answer comes back base64-encoded.
    binary = api.invoke(name, {"httpMethod": "GET", "path": "/binary"}).json()
    assert binary["isBase64Encoded"] is True
    assert base64.b64decode(binary["body"]) == bytes(range(256)) * 4
    # Statuses pass through.
    assert (
        api.invoke(name, {"httpMethod": "GET", "path": "/", "headers": {"X-Status": "418"}}).json()["statusCode"] == 418
    )


def test_an_event_that_is_not_apig_is_posted_to_root(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES)
    echo = echo_of(api.invoke(name, {"plain": True}))
    assert echo["method"] == "POST" and echo["path"] == "/"
    assert json.loads(base64.b64decode(echo["body"])) == {"plain": True}


def test_gateway_forwards_the_request_as_it_came(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES)
    assert api.route(name, f"/web-{name}").status_code == 201
    response = httpx.post(
        f"{api.daemon.gateway_url}/web-{name}/a/b?x=1&x=2&y=%20z",
        content=b"\xff\xfe raw bytes",
        headers=[("X-Multi", "one"), ("X-Multi", "two"), ("Content-Type", "application/weird")],
    )
    assert response.status_code == 200, response.text
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-cff-request-id"]
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == f"/web-{name}/a/b?x=1&x=2&y=%20z"
    assert base64.b64decode(echo["body"]) == b"\xff\xfe raw bytes"
    multi = [v for k, v in echo["headers"] if k.lower() == "x-multi"]
    assert multi == ["one", "two"] or multi == ["one, two"]
    headers = headers_of(echo)
    assert headers["content-type"] == "application/weird"
    assert headers["x-cff-request-id"] == response.headers["x-cff-request-id"]
    # The node's admin token, if a caller sends it, never reaches the function.
    leaked = httpx.get(f"{api.daemon.gateway_url}/web-{name}/", headers={"X-Auth-Token": api.daemon.token})
    assert "x-auth-token" not in headers_of(leaked.json())
    # Binary answers come back as bytes; status codes as they are.
    binary = httpx.get(f"{api.daemon.gateway_url}/web-{name}/binary")
    assert binary.content == bytes(range(256)) * 4
    assert binary.headers["content-type"] == "application/octet-stream"
    assert httpx.get(f"{api.daemon.gateway_url}/web-{name}/", headers={"X-Status": "404"}).status_code == 404


def test_gateway_4_mb_binary_body(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, memory_size=512)
    api.route(name, f"/big-{name}")
    body = os.urandom(4 * 1024 * 1024)
    response = httpx.post(f"{api.daemon.gateway_url}/big-{name}/mirror", content=body, timeout=30)
    assert response.status_code == 200, response.text[:500]
    assert response.content == body


def test_a_6_mb_binary_response_passes_as_it_is(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, memory_size=512)
    api.route(name, f"/six-{name}")
    expected = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    response = httpx.get(f"{api.daemon.gateway_url}/six-{name}/sixmb", timeout=30)
    assert response.status_code == 200, response.text[:500]
    assert response.content == expected
    # Through the API: the APIG response, its binary body base64-encoded.
    answer = api.invoke(name, {"httpMethod": "GET", "path": "/sixmb"}).json()
    assert answer["isBase64Encoded"] is True and base64.b64decode(answer["body"]) == expected


def test_response_over_6_mb_is_refused(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, memory_size=256)
    error = api.invoke(name, {"httpMethod": "GET", "path": "/big"}).json()
    assert error["errorType"] == "Runtime.ResponseTooLarge", error
    api.route(name, f"/toobig-{name}")
    refused = httpx.get(f"{api.daemon.gateway_url}/toobig-{name}/big", timeout=30)
    assert refused.status_code == 502 and "ResponseTooLarge" in refused.json()["error_msg"]


def test_async_invocation_is_refused(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES)
    response = api.http.post(f"/functions/{name}/invocations-async", json={})
    assert response.status_code == 400
    assert "asynchronously" in response.json()["error_msg"]


def test_server_that_never_listens_fails_the_start_with_its_output(api: Api) -> None:
    bootstrap = "#!/bin/sh\necho 'listening on the wrong port'\nexec sleep 1000\n"
    name = deploy(api, "http", {"bootstrap": bootstrap}, initializer_timeout=1)
    started = time.monotonic()
    error = api.invoke(name, {}).json()
    assert time.monotonic() - started < 5
    assert error["errorType"] == "Runtime.InitError", error
    assert "127.0.0.1:8000" in error["errorMessage"] and "listening on the wrong port" in error["errorMessage"]


def test_bootstrap_failing_at_start(api: Api) -> None:
    name = deploy(api, "http", {"bootstrap": "#!/bin/sh\necho 'no such server' >&2\nexit 2\n"})
    error = api.invoke(name, {}).json()
    assert error["errorType"] == "Runtime.ExitError", error
    assert "status 2" in error["errorMessage"] and "no such server" in error["errorMessage"]


def test_server_exit_timeout_memory(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, timeout=1, memory_size=128)
    error = api.invoke(name, {"httpMethod": "GET", "path": "/exit"}).json()
    assert error["errorType"] == "Runtime.ExitError" and "status 4" in error["errorMessage"]
    assert "server exiting" in error["errorMessage"]
    error = api.invoke(name, {"httpMethod": "GET", "path": "/child"}).json()
    assert error["errorType"] == "Runtime.Timeout"
    error = api.invoke(name, {"httpMethod": "GET", "path": "/memory", "headers": {"X-MB": "400"}}).json()
    assert error["errorType"] == "Runtime.OutOfMemory", error
    assert echo_of(api.invoke(name, {"httpMethod": "GET", "path": "/"}))["method"] == "GET"


def test_node_interpreter_path(api: Api) -> None:
    server = script(
        """
        require("http").createServer((req, res) => {
          res.setHeader("X-Node", process.version);
          res.end(JSON.stringify({url: req.url, id: req.headers["x-cff-request-id"]}));
        }).listen(8000, "127.0.0.1");
        """
    )
    bootstrap = "#!/bin/sh\nexec /opt/function/runtime/nodejs20.15/rtsp/nodejs/bin/node server.js\n"
    name = deploy(api, "http", {"bootstrap": bootstrap, "server.js": server})
    response = api.invoke(name, {"httpMethod": "GET", "path": "/n?x=1"})
    answer = response.json()
    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["x-node"].startswith("v")
    assert json.loads(answer["body"]) == {"url": "/n?x=1", "id": response.headers["X-Cff-Request-Id"]}


@pytest.mark.slow
def test_concurrency_in_one_instance_with_attributed_logs(api: Api) -> None:
    name = deploy(api, "http", HTTP_FILES, strategy_config={"concurrency": 1, "concurrent_num": 4}, timeout=10)
    first = echo_of(api.invoke(name, {"httpMethod": "GET", "path": "/"}))
    answers: dict[int, httpx.Response] = {}

    def call(n: int) -> None:
        event = {"httpMethod": "GET", "path": "/print", "headers": {"X-Tag": f"req{n}"}}
        answers[n] = api.invoke(name, event, headers={"X-Cff-Log-Type": "tail"})

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Served at once: every request started before any of them ended.
    spans = [echo_of(answers[n]) for n in range(4)]
    assert max(span["start"] for span in spans) < min(span["end"] for span in spans), spans
    for n, response in answers.items():
        echo = echo_of(response)
        assert echo["pid"] == first["pid"]  # one instance served them all
        log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
        own = [line for line in log.splitlines() if " line " in line]
        assert len(own) == 5 and all(f"req{n} line" in line for line in own), log


@pytest.mark.parametrize(
    "event",
    [
        {"httpMethod": "GET", "path": "/x\r\nX-Injected: 1"},
        {"httpMethod": "GET", "path": "/", "headers": {"X-Bad": "a\r\nX-Injected: 1"}},
        {"httpMethod": "POST", "path": "/", "body": "%%%", "isBase64Encoded": True},
        {"httpMethod": "GET /admin HTTP/1.1\r\n", "path": "/"},
        {"httpMethod": "GET", "path": "no-slash"},
    ],
)
def test_an_event_that_is_no_http_request_is_refused_and_harmless(api: Api, event: dict) -> None:
    name = deploy(api, "http", HTTP_FILES)
    error = api.invoke(name, event).json()
    assert error["errorType"] == "Runtime.InvalidRequest", error
    # Nothing was injected, and the instance still serves.
    echo = echo_of(api.invoke(name, {"httpMethod": "GET", "path": "/ok"}))
    assert "x-injected" not in headers_of(echo)


def test_reserved_instances_have_their_server_up_before_the_first_request(api: Api) -> None:
    from tests.integration.test_reserved import wait_running

    name = deploy(api, "http", HTTP_FILES)
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1}).status_code == 200
    assert wait_running(api, name, 1)
    response = api.invoke(name, {"httpMethod": "GET", "path": "/"})
    assert echo_of(response)["method"] == "GET"
    assert json.loads(response.headers["X-Cff-Invoke-Summary"])["coldStart"] is False
