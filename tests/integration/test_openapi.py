"""Each declared answer Struct is exactly what the daemon answers: decoding a real answer with the
declared type and encoding it again gives the same JSON (no field missing, none extra, no type off)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from openapi_spec_validator import validate

from fgd.web import front
from fgd.web.api.common import Operation, operations
from fgd.web.openapi import declared_app, offline_document
from tests.conftest import RUNTIME, Api, b64, make_zip, unique_name

Call = Callable[["Seeded"], httpx.Response]


class Seeded:
    """A function with a log line, an async invocation, a trigger and a dependency version; and a
    disabled function with a waiting async invocation (to cancel)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.http = api.http
        self.name = api.deploy("def handler(event, context):\n    print('hello')\n    return event\n")["func_name"]
        assert api.invoke(self.name, {"a": 1}).status_code == 200
        queued = self.http.post(f"/functions/{self.name}/invocations-async", json={"b": 2})
        assert queued.status_code == 202
        self.trigger = self.http.post(
            f"/triggers/{self.name}",
            json={"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "1d"}},
        ).json()
        self.dependency = self.http.post(
            "/dependencies/version",
            json={"name": unique_name("dep"), "runtime": RUNTIME, "depend_file": b64(make_zip({"d.py": "X = 1\n"}))},
        ).json()
        self.disabled = api.deploy("def handler(event, context):\n    return 1\n")["func_name"]
        assert self.http.put(f"/functions/{self.disabled}/config-max-instance", json={"max_instance_num": 0}).is_success
        # Never runs (max instances 0): it waits, so it can be cancelled.
        self.waiting = self.http.post(f"/functions/{self.disabled}/invocations-async", json={}).json()["request_id"]


def create_function(s: Seeded) -> httpx.Response:
    return s.api.create(make_zip({"index.py": "def handler(e, c):\n    return 1\n"}))


def put_reserved(s: Seeded) -> httpx.Response:
    return s.http.put(f"/functions/{s.name}/reservedinstances", json={"count": 1})


def list_reserved(s: Seeded) -> httpx.Response:
    assert put_reserved(s).is_success
    answer = s.http.get("/functions/reservedinstances")
    assert answer.json()["count"] >= 1, answer.text
    assert s.http.put(f"/functions/{s.name}/reservedinstances", json={"count": 0}).is_success
    return answer


def list_async(s: Seeded) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        answer = s.http.get(f"/functions/{s.name}/async-invocations")
        rows = answer.json()["invocations"]
        if (rows and rows[0]["status"] == "SUCCESS") or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def publish_version(s: Seeded) -> httpx.Response:
    """A new version of the seeded function (each needs a change since the last)."""
    changed = s.http.put(f"/functions/{s.name}/config", json={"description": unique_name("v")})
    assert changed.is_success, changed.text
    # Named: the default name (the time, to the second) would repeat within a second.
    return s.http.post(f"/functions/{s.name}/versions", json={"version": unique_name("v"), "description": "round trip"})


def alias(s: Seeded) -> str:
    """The seeded function's alias "live", made on first use (pointing at a published version)."""
    if s.http.get(f"/functions/{s.name}/aliases/live").status_code == 404:
        version = publish_version(s).json()["version"]
        made = s.http.post(f"/functions/{s.name}/aliases", json={"name": "live", "version": version})
        assert made.is_success, made.text
    return f"/functions/{s.name}/aliases/live"


def create_alias(s: Seeded) -> httpx.Response:
    version = publish_version(s).json()["version"]
    return s.http.post(f"/functions/{s.name}/aliases", json={"name": unique_name("a"), "version": version})


def dependency_version(s: Seeded) -> str:
    return f"/dependencies/{s.dependency['dep_id']}/version/{s.dependency['version']}"


# How to get a real answer of every operation declared with a Struct (or list of Structs) answer.
CALLS: dict[str, Call] = {
    "list_runtimes": lambda s: s.http.get("/runtimes"),
    "create_function": create_function,
    "list_functions": lambda s: s.http.get("/functions", params={"maxitems": 1}),
    "get_config": lambda s: s.http.get(f"/functions/{s.name}/config"),
    "update_config": lambda s: s.http.put(f"/functions/{s.name}/config", json={"description": "round trip"}),
    "get_code": lambda s: s.http.get(f"/functions/{s.name}/code"),
    "update_code": lambda s: s.http.put(
        f"/functions/{s.name}/code",
        json={
            "code_type": "zip",
            "func_code": {"file": b64(make_zip({"index.py": "def handler(e, c):\n    return e\n"}))},
        },
    ),
    "put_reserved": put_reserved,
    "list_reserved": list_reserved,
    "put_max_instances": lambda s: s.http.put(f"/functions/{s.name}/config-max-instance", json={"max_instance_num": 5}),
    "get_async_invoke_config": lambda s: s.http.get(f"/functions/{s.name}/async-invoke-config"),
    "put_async_invoke_config": lambda s: s.http.put(
        f"/functions/{s.name}/async-invoke-config", json={"max_async_retry_attempts": 2}
    ),
    "invoke_async": lambda s: s.http.post(f"/functions/{s.name}/invocations-async", json={}),
    "list_async": list_async,
    "cancel_async": lambda s: s.http.post(f"/functions/{s.disabled}/cancel", json={"request_id": s.waiting}),
    "create_trigger": lambda s: s.http.post(
        f"/triggers/{s.name}", json={"trigger_type_code": "APIG", "event_data": {"name": "r", "path": f"/{s.name}"}}
    ),
    "list_triggers": lambda s: s.http.get(f"/triggers/{s.name}"),
    "get_trigger": lambda s: s.http.get(f"/triggers/{s.name}/TIMER/{s.trigger['trigger_id']}"),
    "update_trigger": lambda s: s.http.put(
        f"/triggers/{s.name}/TIMER/{s.trigger['trigger_id']}", json={"trigger_status": "DISABLED"}
    ),
    "create_dependency": lambda s: s.http.post(
        "/dependencies/version",
        json={"name": s.dependency["name"], "runtime": RUNTIME, "depend_file": b64(make_zip({"d.py": "X = 2\n"}))},
    ),
    "list_dependencies": lambda s: s.http.get("/dependencies", params={"name": s.dependency["name"]}),
    "list_dependency_versions": lambda s: s.http.get(f"/dependencies/{s.dependency['dep_id']}/version"),
    "get_dependency_version": lambda s: s.http.get(dependency_version(s)),
    "function_logs": lambda s: s.http.get(f"/functions/{s.name}/logs"),
    "healthz": lambda s: httpx.get(f"{s.api.daemon.url}/healthz"),
    "create_key": lambda s: s.http.post("/fgd/keys", json={"description": "round trip"}),
    "publish_version": publish_version,
    "list_versions": lambda s: (publish_version(s), s.http.get(f"/functions/{s.name}/versions"))[1],
    "create_alias": create_alias,
    "list_aliases": lambda s: (
        alias(s),
        s.http.get(f"/functions/{s.name}/aliases"),
    )[1],
    "show_alias": lambda s: s.http.get(alias(s)),
    "update_alias": lambda s: s.http.put(
        alias(s), json={"version": s.http.get(alias(s)).json()["version"], "description": "moved"}
    ),
    "list_reserved_configs": lambda s: s.http.get(
        "/functions/reservedinstanceconfigs", params={"function_urn": s.name}
    ),
    "list_async_invoke_configs": lambda s: s.http.get(f"/functions/{s.name}/async-invoke-configs"),
    "tenant_statistics": lambda s: s.http.get("/functions/statistics", params={"period": "1"}),
    "monthly_statistics": lambda s: s.http.get("/functions/statistics", params={"filter": "monthly_report"}),
    "function_statistics": lambda s: s.http.get(f"/functions/{s.name}/statistics/15"),
    "function_sla_report": lambda s: s.http.get(f"/functions/{s.name}/slareports/5"),
    "quotas": lambda s: s.http.get("/quotas"),
    "list_keys": lambda s: s.http.get("/fgd/keys"),
}


def structured(op: Operation) -> bool:
    """Answers with a shape fgd defines (not a zip, text, the function's own result or the document)."""
    return op.answer not in (None, bytes, str, Any, dict[str, Any])


@pytest.fixture(scope="module")
def seeded(api: Api) -> Seeded:
    return Seeded(api)


def declared() -> list[Operation]:
    return [*operations(declared_app()), *front.OPERATIONS]


# A second answer of an operation whose answer has two forms: {call: operation}.
ALSO = {"monthly_statistics": "tenant_statistics"}


def test_every_structured_answer_has_a_round_trip() -> None:
    assert {op.name for op in declared() if structured(op)} == set(CALLS) - set(ALSO)


@pytest.mark.parametrize("name", list(CALLS))
def test_the_answer_struct_round_trips_a_real_answer(seeded: Seeded, name: str) -> None:
    op = next(op for op in declared() if op.name == ALSO.get(name, name))
    answer = CALLS[name](seeded)
    assert answer.status_code == op.status, answer.text
    decoded = msgspec.json.decode(answer.content, type=op.answer)
    assert json.loads(msgspec.json.encode(decoded)) == answer.json()
    if name == "put_reserved":
        assert seeded.http.put(f"/functions/{seeded.name}/reservedinstances", json={"count": 0}).is_success


def test_the_daemon_serves_the_generated_document_to_authenticated_callers(api: Api) -> None:
    url = f"{api.daemon.url}/v2/openapi.json"
    served = httpx.get(url, headers={"X-Auth-Token": api.daemon.token})
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    validate(served.json())
    assert served.json() == offline_document()
    refused = httpx.get(url)
    assert refused.status_code == 401
    assert refused.json()["error_code"] == "FSS.0401"
    wrong = httpx.get(url, headers={"X-Auth-Token": "not-the-token"})
    assert wrong.status_code == 401


def test_the_invoke_answer_is_documented_as_any_media_type(api: Api) -> None:
    """Found by the fuzzer: a function that returns a string is answered with that string as it
    is (FunctionGraph's rule), not JSON, though the Content-Type says application/json; the
    document, which first said application/json, now says any media type."""
    name = api.deploy("def handler(event, context):\n    return event\n")["func_name"]
    answer = api.http.post(
        f"/functions/{name}/invocations", content=b'"\\ud86f\\udfe6"', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200
    assert answer.content == "\U0002bfe6".encode()
    with pytest.raises(ValueError):
        json.loads(answer.content)
    invoke = offline_document()["paths"]["/v2/{project_id}/fgs/functions/{urn}/invocations"]["post"]
    assert set(invoke["responses"]["200"]["content"]) == {"*/*"}
