"""APIG triggers: HTTP routes on the gateway listener, FunctionGraph's APIG event and response."""

from __future__ import annotations

import json

import httpx

from tests.conftest import Api

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


def route(api: Api, name: str, path: str, **extra) -> httpx.Response:
    body = {"trigger_type_code": "APIG", "event_data": {"name": f"r{abs(hash(path)) % 10**6}", "path": path, **extra}}
    return api.http.post(f"/triggers/{name}", json=body)


def test_round_trip_with_base64_body_headers_and_query(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    assert route(api, name, f"/hello-{name}").status_code == 201
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
    route(api, name, f"/exact-{name}", match_mode="NORMAL", req_method="GET")
    assert httpx.get(f"{api.daemon.gateway_url}/exact-{name}").status_code == 201
    assert httpx.get(f"{api.daemon.gateway_url}/exact-{name}/more").status_code == 404
    assert httpx.post(f"{api.daemon.gateway_url}/exact-{name}").status_code == 404


def test_token_auth(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    route(api, name, f"/private-{name}", auth="TOKEN")
    url = f"{api.daemon.gateway_url}/private-{name}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": "wrong"}).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": api.daemon.token}).status_code == 201


def test_bad_result_and_failed_function_are_502(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    route(api, name, f"/p-{name}")
    bad = httpx.get(f"{api.daemon.gateway_url}/p-{name}/bad")
    assert bad.status_code == 502
    assert "not an APIG response" in bad.json()["error_msg"]
    crash = httpx.get(f"{api.daemon.gateway_url}/p-{name}/crash")
    assert crash.status_code == 502
    assert "ValueError: boom" in crash.json()["error_msg"]


def test_routes_conflict_and_body_limit(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    assert route(api, name, f"/taken-{name}").status_code == 201
    conflict = route(api, name, f"/taken-{name}", req_method="GET")
    assert conflict.status_code == 409
    big = httpx.post(f"{api.daemon.gateway_url}/taken-{name}", content=b"x" * (4 * 1024 * 1024 + 1))
    assert big.status_code == 413
    assert httpx.get(f"{api.daemon.gateway_url}/nothing-here").status_code == 404
    assert route(api, name, "no-slash").status_code == 400


def test_plain_body_result(api: Api) -> None:
    source = (
        "def handler(e, c):\n"
        "    return {'statusCode': 200, 'body': 'plain text', 'headers': {'Content-Type': 'text/plain'}}\n"
    )
    name = api.deploy(source)["func_name"]
    route(api, name, f"/plain-{name}")
    response = httpx.get(f"{api.daemon.gateway_url}/plain-{name}")
    assert response.status_code == 200 and response.text == "plain text"
    assert response.headers["content-type"] == "text/plain"
