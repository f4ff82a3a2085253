"""The OpenAPI document: valid 3.1, and exactly the routes the daemon serves."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import msgspec
import pytest
from openapi_spec_validator import validate
from quart_trio import QuartTrio

from fgd.web import front
from fgd.web.api.common import operations, route
from fgd.web.openapi import any_object_schema, declared_app, document, offline_document, openapi_path

METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH"}


@pytest.fixture(scope="module")
def app() -> QuartTrio:
    # Registration reads only the declarations; no handler runs here.
    return declared_app()


@pytest.fixture(scope="module")
def doc(app: QuartTrio) -> dict[str, Any]:
    return document(app)


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_quart_route_is_in_the_document_and_nothing_else(app: QuartTrio, doc: dict[str, Any]) -> None:
    served = {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) & METHODS
    }
    by_front = {(op.method, openapi_path(op.path)) for op in front.OPERATIONS}
    assert served, "the app has no routes"
    assert served | by_front == described(doc)
    assert not served & by_front, "a route is served both by the front and by the app"


def test_the_front_serves_exactly_what_it_declares() -> None:
    """The front's path patterns come from the declarations: the invoke route, and the raw zip
    forms of the routes declared with raw_zip."""
    assert front.INVOKE_PATH.match("/v2/default/fgs/functions/urn:fss:local:default:function:default:f/invocations")
    assert not front.INVOKE_PATH.match("/v2/default/fgs/functions/a/b/invocations")
    raw = {op.name: op for op in operations(declared_app()) if op.raw_zip is not None}
    assert set(raw) == {"update_code", "create_dependency"}
    example = {"project_id": "p", "urn": "f"}
    for op, pattern in ((raw["update_code"], front.CODE_PATH), (raw["create_dependency"], front.DEPENDENCY_PATH)):
        assert op.method in ("PUT", "POST")
        assert pattern.match(openapi_path(op.path).format(**example)), op.path


def test_every_operation_is_authenticated_but_healthz(doc: dict[str, Any]) -> None:
    open_ = {path for path, item in doc["paths"].items() for op in item.values() if op.get("security") == []}
    assert open_ == {"/healthz"}
    assert {"token", "bearer", "aksk"} <= set(doc["components"]["securitySchemes"])
    assert doc["components"]["securitySchemes"]["token"]["name"] == "X-Auth-Token"
    for path, item in doc["paths"].items():
        for op in item.values():
            if path != "/healthz":
                assert "401" in op["responses"], path


def test_errors_are_one_error_body_with_the_platform_code(doc: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"]["ErrorBody"]
    assert set(schema["required"]) == {"error_code", "error_msg"}
    for path, item in doc["paths"].items():
        for op in item.values():
            for status, answer in op["responses"].items():
                # /healthz's 503 is its report (a runtime is restarting), not an error.
                if int(status) >= 400 and (path, status) != ("/healthz", "503"):
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_answers_and_bodies_are_the_code_s_structs(doc: dict[str, Any]) -> None:
    """The components are msgspec's schemas of the Structs the handlers use (no copy by hand)."""
    from fgd.model import CreateFunction, FunctionConfig

    _, components = msgspec.json.schema_components(
        [CreateFunction, FunctionConfig], schema_hook=any_object_schema, ref_template="{name}"
    )
    schemas = doc["components"]["schemas"]
    assert schemas["FunctionConfig"]["required"] == components["FunctionConfig"]["required"]
    assert schemas["CreateFunction"]["properties"].keys() == components["CreateFunction"]["properties"].keys()
    create = doc["paths"]["/v2/{project_id}/fgs/functions"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateFunction")
    assert create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/FunctionConfig")
    # A partial update: FunctionSettings's fields, none required.
    update = doc["paths"]["/v2/{project_id}/fgs/functions/{urn}/config"]["put"]["requestBody"]
    patch = schemas[update["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert "required" not in patch and "handler" in patch["properties"]
    # Query parameters come from their Structs, with their limits.
    listing = doc["paths"]["/v2/{project_id}/fgs/functions"]["get"]["parameters"]
    by_name = {p["name"]: p for p in listing}
    assert by_name["maxitems"]["in"] == "query" and not by_name["maxitems"]["required"]
    assert by_name["maxitems"]["schema"]["minimum"] == 0
    assert by_name["func_name"]["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,60}$"


def test_fgd_openapi_prints_the_document_without_a_daemon() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "fgd", "openapi"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "FGD_ENDPOINT": "http://127.0.0.1:9"},
    )
    doc = json.loads(printed.stdout)
    validate(doc)
    assert doc == offline_document()


class Small(msgspec.Struct):
    value: int


async def test_a_route_answer_is_converted_to_its_declared_type_or_is_a_500() -> None:
    """A handler may answer plain data of the declared shape; anything else is a programming
    error, never an answer the document does not describe."""
    app = QuartTrio("t")

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> tuple[str, int]:
        return type(error).__name__, 500

    @route(app, "GET", "/good", answer=Small, status=201)
    async def good() -> Small:
        return Small(1)

    @route(app, "GET", "/plain", answer=Small)
    async def plain() -> Any:
        return {"value": 2, "undeclared": "left out"}

    @route(app, "GET", "/bad", answer=Small)
    async def bad() -> Any:
        return {"value": "2"}

    client = app.test_client()
    answer = await client.get("/good")
    assert answer.status_code == 201
    assert await answer.get_json() == {"value": 1}
    converted = await client.get("/plain")
    assert converted.status_code == 200
    assert await converted.get_json() == {"value": 2}
    wrong = await client.get("/bad")
    assert wrong.status_code == 500
    assert await wrong.get_data(as_text=True) == "TypeError"
    assert [op.name for op in operations(app)] == ["good", "plain", "bad"]


def test_the_invoke_route_documents_its_headers(doc: dict[str, Any]) -> None:
    invoke = doc["paths"]["/v2/{project_id}/fgs/functions/{urn}/invocations"]["post"]
    sent = {p["name"]: p for p in invoke["parameters"] if p["in"] == "header"}
    assert sent["X-Cff-Instance-Memory"]["schema"] == {"type": "integer", "minimum": 64, "maximum": 10240}
    assert set(sent) == {"X-Cff-Log-Type", "X-Cff-Request-Version", "X-Cff-Instance-Memory"}
    answered = invoke["responses"]["200"]["headers"]
    assert answered["X-Cff-Request-Id"]["required"] and answered["X-Is-Func-Err"]["required"]
    assert not answered["X-Cff-Function-Log"]["required"]


def test_every_answer_documents_its_request_id(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                assert answer["headers"]["X-Request-Id"]["required"], (method, path, status)
    queued = doc["paths"]["/v2/{project_id}/fgs/functions/{urn}/invocations-async"]["post"]["responses"]["202"]
    assert queued["headers"]["X-Cff-Request-Id"]["required"]


def test_patterns_are_in_json_schema_s_dialect(doc: dict[str, Any]) -> None:
    """fgd's patterns end in Python's \\Z (no match before a final newline); JSON Schema's
    regular expressions (ECMA-262) have no \\Z, and their $ means the same."""
    from fgd.model import FUNC_NAME_RE

    assert FUNC_NAME_RE.endswith("\\Z")
    text = json.dumps(doc)
    assert "\\\\Z" not in text
    assert doc["components"]["schemas"]["CreateFunction"]["properties"]["func_name"]["pattern"] == (
        FUNC_NAME_RE.removesuffix("\\Z") + "$"
    )
