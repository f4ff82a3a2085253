"""Function logs: every line of an invocation stored with its request id, plus a summary."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.conftest import Api

CHATTY = """
    import subprocess, sys

    def handler(event, context):
        print("out", event["n"])
        print("err", event["n"], file=sys.stderr)
        context.getLogger().warn("warned %s", event["n"])
        subprocess.run(["sh", "-c", f"echo child {event['n']}"])
        return event["n"]
"""


def test_log_api_returns_each_invocations_lines_with_its_request_id(api: Api) -> None:
    name = api.deploy(CHATTY)["func_name"]
    ids = [api.invoke(name, {"n": n}).headers["x-cff-request-id"] for n in range(3)]
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": ids[1]}).json()["logs"]
    by_stream = {(line["stream"], line["message"]) for line in logs}
    assert ("stdout", "out 1") in by_stream
    assert ("stderr", "err 1") in by_stream
    assert ("logger", "[WARN] warned 1") in by_stream
    assert ("stdout", "child 1") in by_stream
    assert all(line["request_id"] == ids[1] for line in logs)
    assert all(line["instance_id"] for line in logs)
    summary = [line for line in logs if line["stream"] == "platform"]
    assert len(summary) == 1
    message = summary[0]["message"]
    for field in ("Duration:", "Billed Duration:", "Memory Size: 128 MB", "Max Memory Used:"):
        assert field in message
    assert "Init Duration" not in message


def test_cold_start_summary_has_init_duration(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    request_id = api.invoke(name).headers["x-cff-request-id"]
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    assert "Init Duration:" in logs[-1]["message"]


def test_log_api_limit_keeps_the_newest_lines_in_order(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    for i in range(10):\n        print('line', i)\n    return 1\n")[
        "func_name"
    ]
    api.invoke(name)
    logs = api.http.get(f"/functions/{name}/logs", params={"limit": 3}).json()["logs"]
    assert [line["message"] for line in logs[:2]] == ["line 8", "line 9"]
    assert logs[2]["stream"] == "platform"
    times = [line["time"] for line in logs]
    assert times == sorted(times)


def test_log_api_since_filters_by_time(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print(e['n'])\n    return 1\n")["func_name"]
    api.invoke(name, {"n": "early"})
    time.sleep(0.05)
    cut = time.time()
    api.invoke(name, {"n": "late"})
    messages = [
        line["message"] for line in api.http.get(f"/functions/{name}/logs", params={"since": cut}).json()["logs"]
    ]
    assert "late" in messages and "early" not in messages


def test_log_api_validates_parameters(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    for params in ({"limit": 0}, {"limit": "many"}, {"since": "yesterday"}, {"follow": "maybe"}):
        response = api.http.get(f"/functions/{name}/logs", params=params)
        assert response.status_code == 400, params
        assert response.json()["error_code"] == "FSS.0400"


def test_follow_streams_new_lines(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print('followed', e['n'])\n    return 1\n")["func_name"]
    api.invoke(name, {"n": 0})
    received: list[dict] = []

    def follow() -> None:
        client = httpx.Client(base_url=api.http.base_url, headers=api.http.headers, timeout=10)
        with client, client.stream("GET", f"/functions/{name}/logs", params={"follow": "true"}) as response:
            for line in response.iter_lines():
                if line:
                    received.append(json.loads(line))
                if any(r["message"] == "followed 1" for r in received):
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.3)
    api.invoke(name, {"n": 1})
    reader.join(5)
    messages = [r["message"] for r in received]
    assert "followed 0" in messages
    assert "followed 1" in messages


def test_logs_of_a_deleted_function_are_gone(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print('x')\n    return 1\n")["func_name"]
    api.invoke(name)
    api.http.delete(f"/functions/{name}")
    api.deploy("def handler(e, c):\n    return 1\n", name=name)
    assert api.http.get(f"/functions/{name}/logs").json()["logs"] == []
