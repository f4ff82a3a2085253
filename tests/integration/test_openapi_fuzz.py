"""Schemathesis against a real daemon, with fgd's OpenAPI document.

Every operation of the document is called with inputs generated from its schemas, valid and
invalid ones (bounded: 25 examples per operation, derandomized so every run sends the same
requests); each answer must not be a 5xx, must have a documented status, content type and
headers, and must match the documented schema. The daemon is seeded with a function, a
dependency version, a trigger, a published version and an alias, and the path parameters are
pinned to them, so routes with {urn}, {dep_id}, {trigger_id} or an alias {name} reach a real
resource rather than a 404.

The second run sends each operation (6 examples) signed with an access key by the official
SDK's signer instead of the admin token: whatever the path, query, headers and body, the
signature must verify (no 401).
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fgd.web.openapi import offline_document
from tests.conftest import RUNTIME, Api, Daemon, access_key, b64, make_zip
from tests.integration.test_keys import signed

FUNCTION = "fuzzed"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# A small node: whatever memory sizes or reserved counts the fuzzer sets, few instances can start.
CONFIG = """
    [scheduler]
    memory_budget_mb = 1024
    [instances]
    idle_keepalive = 2.0
"""


class Seeded:
    def __init__(self, daemon: Daemon, dep_id: str, dep_version: int, trigger_id: str) -> None:
        self.daemon = daemon
        self.dep_id = dep_id
        self.dep_version = dep_version
        self.trigger_id = trigger_id


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    daemon = Daemon(tmp_path_factory.mktemp("fuzz") / "state", CONFIG)
    daemon.start()
    api = Api(daemon)
    api.deploy("def handler(event, context):\n    return {'echo': event}\n", name=FUNCTION)
    dependency = api.http.post(
        "/dependencies/version",
        json={"name": "fuzzdep", "runtime": RUNTIME, "depend_file": b64(make_zip({"python/fuzzdep.py": "X = 1\n"}))},
    )
    assert dependency.status_code == 200, dependency.text
    trigger = api.http.post(
        f"/triggers/{FUNCTION}",
        json={"trigger_type_code": "TIMER", "event_data": {"name": "daily", "schedule_type": "Rate", "schedule": "1d"}},
    )
    assert trigger.status_code == 201, trigger.text
    published = api.http.post(f"/functions/{FUNCTION}/versions", json={"version": "v1"})
    assert published.status_code == 200, published.text
    alias = api.http.post(f"/functions/{FUNCTION}/aliases", json={"name": "live", "version": "v1"})
    assert alias.status_code == 200, alias.text
    yield Seeded(daemon, dependency.json()["dep_id"], dependency.json()["version"], trigger.json()["trigger_id"])
    daemon.stop()
    # A 500 is caught by the checks; the log says where it came from.
    assert "Traceback" not in daemon.log(), daemon.log()


def pinned(seeded: Seeded, operation: str) -> dict[str, Any]:
    """Path parameters naming the seeded resources. Deleting the seeded function or dependency
    version would leave the other operations nothing real to work on: those two name ones that
    do not exist."""
    values: dict[str, Any] = {
        "project_id": "default",
        "urn": FUNCTION,
        "dep_id": seeded.dep_id,
        "number": seeded.dep_version,
        "kind": "TIMER",
        "trigger_id": seeded.trigger_id,
        # Minutes: a valid period of both statistics/{period} and slareports/{period}.
        "period": "5",
        # The seeded alias (of version v1).
        "name": "live",
    }
    if operation == "delete_function":
        values["urn"] = "absent"
    if operation == "delete_trigger":
        values["trigger_id"] = "absent"
    if operation == "delete_alias":
        values["name"] = "absent"
    if operation == "delete_dependency_version":
        values["number"] = 999
    return values


CREATED = itertools.count()
CODE = make_zip({"index.py": "def handler(event, context):\n    return event\n"})


def checks_for(operation: str) -> list[Any]:
    """CHECKS, but the sync invoke's answer is the function's own result: a string it returns is
    the body as it is, not JSON, under Content-Type application/json (FunctionGraph's rule; the
    document says any media type), so there is no schema to parse it against."""
    if operation == "invoke_function":
        return [check for check in CHECKS if check is not response_schema_conformance]
    return CHECKS


def usable(operation: str, body: dict[str, Any]) -> None:
    """Make a generated body's runtime, handler and package real, so creates and code updates get
    past those checks and the rest of the body (random settings) reaches the model and the store."""
    if "runtime" in body and operation in ("create_function", "create_dependency"):
        body["runtime"] = RUNTIME
    if isinstance(body.get("func_name"), str) and operation == "create_function":
        # Generated names repeat (hypothesis favours small ones): each create would be a 409.
        body["func_name"] = f"f{next(CREATED)}{body['func_name']}"[:60]
    if "handler" in body and operation == "create_function":
        # The document gives the handler's length, not its form (file.function), checked apart.
        body["handler"] = "index.handler"
    if operation in ("create_function", "update_code") and isinstance(body.get("func_code"), dict):
        source = "def handler(event, context):\n    return event\n"
        body["func_code"]["file"] = b64(source if body.get("code_type") == "inline" else CODE)
    if operation == "create_dependency" and "depend_file" in body:
        body["depend_file"] = b64(make_zip({"python/fuzzed_dep.py": "X = 1\n"}))


# The document as `fgd openapi` prints it (tests/integration/test_openapi.py checks the daemon
# serves the same).
schema = schemathesis.openapi.from_dict(
    offline_document(), config=SchemathesisConfig.from_dict({"generation": {"mode": "all"}})
)


def fuzz_settings(examples: int) -> Any:
    """Hypothesis settings of both runs: bounded, deterministic, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )


# Raw zip uploads: the generated bytes go as they are (the daemon answers 400: not a zip).
schemathesis.serializer.alias("application/zip", "application/octet-stream")


@pytest.mark.slow
@schema.parametrize()
@fuzz_settings(examples=25)
def test_every_operation_answers_as_documented(case: Any, seeded: Seeded) -> None:
    operation = case.operation.definition.raw["operationId"]
    if isinstance(case.body, dict):
        usable(operation, case.body)
    if case.path_parameters is not None:
        values = pinned(seeded, operation)
        case.path_parameters = {name: values.get(name, value) for name, value in case.path_parameters.items()}
    if case.query:
        # follow=true streams for up to an hour; the checks read whole answers.
        case.query.pop("follow", None)
    case.call_and_validate(
        base_url=seeded.daemon.url, headers={"X-Auth-Token": seeded.daemon.token}, checks=checks_for(operation)
    )


# One client for the signed requests (a new one per request costs an SSL context each).
HTTP = httpx.Client(timeout=30)


def not_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request signed by the official SDK's signer is never refused as unsigned or mis-signed."""
    if response.status_code == 401:
        raise AssertionError(f"the signed request was refused: {response.text}")
    return None


@pytest.fixture(scope="module")
def key(seeded: Seeded) -> dict:
    return access_key(seeded.daemon, description="fuzz")


@pytest.mark.slow
@schema.parametrize()
@fuzz_settings(examples=6)
def test_every_operation_accepts_what_the_sdk_signs(case: Any, seeded: Seeded, key: dict) -> None:
    """The same operations, signed with an access key by huaweicloudsdkcore's Signer (AK/SK), as
    FunctionGraph's SDKs sign: whatever the path, query and body, the signature verifies."""
    operation = case.operation.definition.raw["operationId"]
    if isinstance(case.body, dict):
        usable(operation, case.body)
    if case.path_parameters is not None:
        values = pinned(seeded, operation)
        case.path_parameters = {name: values.get(name, value) for name, value in case.path_parameters.items()}
    if case.query:
        case.query.pop("follow", None)
    prepared = requests.Request(**case.as_transport_kwargs(base_url=seeded.daemon.url)).prepare()
    url = urllib.parse.urlsplit(prepared.url)
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body or b""
    # The case's own headers only (requests' defaults differ from httpx's), and none of the
    # credentials generated for the document's security schemes: the signature is the credential.
    dropped = ("content-length", "content-type", "authorization", "x-auth-token")
    headers = {k: str(v) for k, v in (case.headers or {}).items() if k.lower() not in dropped}
    signed_url, signed_headers = signed(
        seeded.daemon,
        key,
        prepared.method or "GET",
        url.path,
        body,
        content_type=prepared.headers.get("Content-Type"),
        extra=headers,
        query=urllib.parse.parse_qsl(url.query, keep_blank_values=True),
    )
    response = HTTP.request(prepared.method or "GET", signed_url, headers=signed_headers, content=body)
    case.validate_response(response, checks=[*checks_for(operation), not_refused])
